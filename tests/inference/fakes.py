"""A deterministic stand-in engine for HTTP-layer tests that need exact control.

`FakeEngine` implements `inference.engine_api.AsyncEngine`: it "generates" a fixed script of token
ids (the tokenization of REPLY_TEXT, then EOS), optionally slowly, and can be told to refuse
admission (queue full), to hold tokens until released, or to die. The API tests against the real
engine live in test_api.py; this double is for overload, disconnect and lifecycle cases a real
model cannot be steered into.

Run as a module it serves the fake engine through the production lifecycle (`inference.serve`), so
lifecycle tests can send real signals to a real process:

    python -m tests.inference.fakes --model-dir DIR --port P [--token-delay S] [--die-after S]
        [--drain-timeout S] [--api-keys-file F] [--max-model-len N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.engine_api import (
    EngineDeadError,
    EngineShuttingDownError,
    GenerationRequest,
    QueueFullError,
    TokenEvent,
)

REPLY_TEXT = " The platform serves language models inside a private network."


class FakeEngine:
    """Scripted engine: token i of every request is `script[i]`, EOS ends it unless ignore_eos."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        model_name: str = "fake-model",
        max_model_len: int = 256,
        token_delay_s: float = 0.0,
        retry_after_s: float = 2.5,
    ) -> None:
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.token_delay_s = token_delay_s
        self.retry_after_s = retry_after_s
        self.script: list[int] = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)
        self.eos_id: int = tokenizer.eos_token_id
        self.queue_full = False
        self.admission_closed = False
        self.ready = True
        self.dead = False
        # While set, tokens after the first wait for `release` (a threading.Event so the test thread
        # can set it while the server's loop runs elsewhere).
        self.hold = False
        self.release = threading.Event()
        self.requests: list[GenerationRequest] = []
        self.active: set[str] = set()
        self.aborted: list[str] = []
        self.closed_early: list[str] = []
        self.shutdown_called = False

    # -- AsyncEngine ---------------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.active)

    @property
    def num_waiting(self) -> int:
        return 0

    @property
    def is_ready(self) -> bool:
        return self.ready and not self.dead

    @property
    def is_dead(self) -> bool:
        return self.dead

    def token_at(self, i: int) -> int:
        """The scripted token at output position i (the script, then EOS, repeating)."""
        cycle = [*self.script, self.eos_id]
        return cycle[i % len(cycle)]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        if self.dead:
            raise EngineDeadError("fake engine is dead")
        if self.admission_closed:
            raise EngineShuttingDownError("draining")
        if self.queue_full:
            raise QueueFullError(self.retry_after_s)
        self.requests.append(request)
        rid = request.request_id
        self.active.add(rid)
        finished = False
        try:
            for i in range(request.params.max_tokens):
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                while self.hold and i >= 1 and not self.release.is_set() and not self.dead:
                    await asyncio.sleep(0.005)
                if self.dead:
                    raise EngineDeadError("fake engine died mid-request")
                if rid in self.aborted:
                    finished = True
                    yield TokenEvent(None, "abort")
                    return
                token = self.token_at(i)
                if token == self.eos_id and not request.params.ignore_eos:
                    finished = True
                    yield TokenEvent(token, "stop")
                    return
                last = i == request.params.max_tokens - 1
                finished = last
                yield TokenEvent(token, "length" if last else None)
        finally:
            self.active.discard(rid)
            if not finished:
                self.closed_early.append(rid)

    def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def stop_admission(self) -> None:
        self.admission_closed = True

    def mark_dead(self, reason: str) -> None:
        self.dead = True

    async def shutdown(self) -> None:
        self.shutdown_called = True


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run `app` with uvicorn on 127.0.0.1 in a background thread; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class RunningFake:
    """A FakeEngine behind the real app and uvicorn, on 127.0.0.1."""

    url: str
    engine: FakeEngine
    state: Any  # inference.server.ServerState: lets a test flip `draining`


@contextlib.contextmanager
def fake_server(tokenizer: Any, api_keys: Any = None, tool_call_parser: str = "hermes",
                **engine_kwargs: Any) -> Iterator[RunningFake]:
    """Serve a FakeEngine through `create_app` in a background thread."""
    from inference.server import create_app

    engine = FakeEngine(tokenizer, **engine_kwargs)
    app = create_app(engine, tokenizer, api_keys=api_keys, tool_call_parser=tool_call_parser)
    with serve_in_thread(app) as url:
        yield RunningFake(url, engine, app.state.server)


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def main(argv: list[str] | None = None) -> int:
    """Serve a FakeEngine through the production lifecycle (see module docstring)."""
    from inference.auth import APIKeys, load_keys_from_file
    from inference.serve import LifecycleConfig, configure_logging, serve_app
    from inference.server import create_app

    parser = argparse.ArgumentParser(prog="python -m tests.inference.fakes")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--die-after", type=float, default=None, help="engine dies after S seconds")
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    parser.add_argument("--api-keys-file", type=Path, default=None)
    parser.add_argument("--max-model-len", type=int, default=256)
    parser.add_argument("--hold", action="store_true",
                        help="tokens after the first wait forever (a step stuck in a collective)")
    args = parser.parse_args(argv)

    configure_logging(rank=0)
    engine = FakeEngine(load_tokenizer(args.model_dir), token_delay_s=args.token_delay,
                        max_model_len=args.max_model_len)
    engine.hold = args.hold
    keys = APIKeys(load_keys_from_file(args.api_keys_file)) if args.api_keys_file else None
    app = create_app(engine, engine.tokenizer, api_keys=keys)

    async def run() -> int:
        if args.die_after is not None:
            asyncio.get_running_loop().call_later(args.die_after, setattr, engine, "dead", True)
        return await serve_app(app, engine, LifecycleConfig("127.0.0.1", args.port, args.drain_timeout))

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
