"""The `python -m inference` command line: `serve` (the HTTP server) and `make-model`.

Process model of `serve`:
  * `--tp-size 1`: one process loads the engine and serves HTTP.
  * `--tp-size N > 1` (not already under a launcher): this process becomes a small supervisor
    (`inference.supervisor`) that starts N copies of the same `serve` command as ranks, with the
    variables DeepSpeed's launcher sets; rank 0 serves HTTP, the other ranks run the engine's
    follower loop. SIGTERM goes to rank 0 only (drain); a rank that dies is reported to rank 0 with
    SIGUSR1 (fail everything, exit 1).
  * Under an external launcher (`deepspeed --num_gpus N -m inference serve ...`, WORLD_SIZE set),
    the process is a rank directly.

Lifecycle of the HTTP rank: SIGTERM (or SIGINT) -> stop admission (`/ready` 503, new requests 503,
engine.stop_admission) -> wait for in-flight requests up to `--drain-timeout` -> close the listener
-> engine.shutdown -> exit 0. A second signal exits at once. If the engine reports `is_dead` (a
rank died, a collective timed out) or the supervisor reports a dead rank (SIGUSR1), in-flight
requests fail at once, and the server exits 1 once they have sent their error (at most
DEAD_ENGINE_GRACE_S), so the pod restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from . import defaults, settings, shm_op
from .auth import APIKeys, KeyLoadError, load_keys_from_file, load_keys_from_key_vault
from .shm_op import StartupWaitTimeout
from .supervisor import RANK_LOST_SIGNAL, exit_now, run_ranks  # RANK_LOST_SIGNAL: fail everything, exit 1

log = logging.getLogger("inference.serve")

EXIT_OK = 0
EXIT_ENGINE_FAILED = 1
EXIT_USAGE = 2
# How often the HTTP rank checks the engine's health and the drain's progress.
WATCH_INTERVAL_S = 0.2
# Bound on engine.shutdown(): the followers are released by it; a hung one must not hang the pod.
ENGINE_SHUTDOWN_TIMEOUT_S = 15.0
# After the drain timeout, how long aborted requests get to end their responses.
ABORT_GRACE_S = 2.0
# Once the engine is dead, how long failed requests get to send their error before the process exits
# (uvicorn's graceful-shutdown timeout: connections still open after it are closed).
DEAD_ENGINE_GRACE_S = 3


class UsageError(Exception):
    """A command-line argument is invalid (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every usage error takes one path."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= `minimum`, with an error naming the bad value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in 1..65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `python -m inference` parser (flag names are a contract with the Kubernetes component)."""
    parser = _Parser(prog="python -m inference", description="inferforge inference server")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    serve.add_argument("--model-dir", required=True, type=Path,
                       help="local Hugging Face model directory (config.json, safetensors, tokenizer)")
    serve.add_argument("--model-name", default=None,
                       help="name clients use in `model` (default: the model directory's name)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="bind address (default 127.0.0.1; 0.0.0.0 in a container)")
    serve.add_argument("--port", type=_port, default=defaults.PORT, help="listening port (default %(default)s)")
    settings.add_arguments(serve.add_argument_group(
        "serving settings (inference/settings.py: the same names in the stack config's inference section)"))
    serve.add_argument("--cpu-widen-min-rows", type=_nonnegative_int, default=None,
                       help="CPUs without native bf16/fp16 GEMM: compute 16-bit linear products of at least "
                            "this many token rows in fp32 (default 8; 0 disables)")
    serve.add_argument("--chat-template", default=None,
                       help="chat template replacing the tokenizer's: a file path or the Jinja text itself")
    embed = serve.add_argument_group("embeddings from a separate model (--embeddings served uses the served one)")
    embed.add_argument("--embeddings-model-dir", type=Path, default=None,
                       help="a separate Hugging Face embedding model directory, loaded on rank 0")
    embed.add_argument("--embeddings-matryoshka", action="store_true",
                       help="the embedding model is Matryoshka-trained: requests may ask for fewer "
                            "`dimensions` (truncated and renormalised)")
    keys = serve.add_argument_group("API keys (one source is required unless --allow-unauthenticated)")
    keys.add_argument("--api-keys-file", type=Path, default=None,
                      help="file of keys, one per line or comma-separated (development)")
    keys.add_argument("--api-keys-keyvault-url", default=None,
                      help="Key Vault URL, e.g. https://kv-name.vault.azure.net/ (workload identity)")
    keys.add_argument("--api-keys-secret", default=None,
                      help="name of the Key Vault secret holding the keys")
    keys.add_argument("--allow-unauthenticated", action="store_true",
                      help="serve without API keys (only for local development)")

    make_model = sub.add_parser("make-model", help="write a small seeded model + tokenizer (tests, benchmarks)",
                                add_help=False)
    make_model.add_argument("model_args", nargs=argparse.REMAINDER,
                            help="arguments of `python -m inference.model_factory` (see --help)")
    return parser


def validate_serve_args(args: argparse.Namespace) -> None:
    """Cross-argument checks argparse cannot express; raises UsageError naming the fix."""
    model_dir: Path = args.model_dir
    if not model_dir.is_dir():
        raise UsageError(f"--model-dir {model_dir} is not a directory")
    if not (model_dir / "config.json").is_file():
        raise UsageError(f"--model-dir {model_dir} has no config.json; expected a Hugging Face model directory")
    args.chat_template_text = None
    if args.chat_template is not None:
        from .chat_template import load_chat_template

        try:
            args.chat_template_text = load_chat_template(args.chat_template)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    _validate_embedding_args(args)
    try:
        # Read again at the TP join; a typo fails here, in the supervisor, before any rank starts.
        shm_op.mode_from_env()
        shm_op.timeout_from_env()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    vault = args.api_keys_keyvault_url is not None or args.api_keys_secret is not None
    if args.api_keys_file is not None and vault:
        raise UsageError("give either --api-keys-file or --api-keys-keyvault-url/--api-keys-secret, not both")
    if vault and (args.api_keys_keyvault_url is None or args.api_keys_secret is None):
        raise UsageError("--api-keys-keyvault-url and --api-keys-secret must be given together")
    if args.allow_unauthenticated and (vault or args.api_keys_file is not None):
        raise UsageError("--allow-unauthenticated contradicts the API key options; choose one")
    if not (vault or args.api_keys_file is not None or args.allow_unauthenticated):
        raise UsageError(
            "no API key source: give --api-keys-file PATH, or --api-keys-keyvault-url URL with "
            "--api-keys-secret NAME; --allow-unauthenticated serves without keys (development only)"
        )


def _validate_embedding_args(args: argparse.Namespace) -> None:
    served = args.embeddings == settings.Embeddings.SERVED
    if served and args.embeddings_model_dir is not None:
        raise UsageError("give either --embeddings served or --embeddings-model-dir DIR, not both")
    problem = settings.embeddings_problem(args.embeddings, args.tp_size,
                                          {"embeddings": "--embeddings", "tp_size": "--tp-size"},
                                          instead="--embeddings-model-dir DIR with a dedicated embedding model")
    if problem:
        raise UsageError(problem)
    if args.embeddings_model_dir is not None and not (args.embeddings_model_dir / "config.json").is_file():
        raise UsageError(f"--embeddings-model-dir {args.embeddings_model_dir} has no config.json; expected a "
                         "Hugging Face model directory")
    if args.embeddings_pooling is None:
        # The right pooling depends on the source: a decoder's last token, a BERT-style model's mean.
        args.embeddings_pooling = (defaults.EMBEDDINGS_POOLING_SERVED if served
                                   else defaults.EMBEDDINGS_POOLING_MODEL_DIR)


def load_embedding_service(args: argparse.Namespace, engine: Any) -> Any:
    """The /v1/embeddings service the flags ask for, or None (rank 0, after the engine is up)."""
    served = args.embeddings == settings.Embeddings.SERVED
    if not served and args.embeddings_model_dir is None:
        return None
    from .embeddings import EmbeddingConfig, EmbeddingService

    model_dir = args.model_dir if served else args.embeddings_model_dir
    name = engine.model_name if served else model_dir.name
    # Same device and dtype as the engine on rank 0 (a CPU engine computes in the dtype it resolved).
    cfg = EmbeddingConfig(model_dir=model_dir, model_name=name, pooling=args.embeddings_pooling,
                          matryoshka=args.embeddings_matryoshka, device=str(engine.device), dtype=engine.dtype)
    return EmbeddingService.load(cfg, served_names=(engine.model_name,))


def load_api_keys(args: argparse.Namespace) -> APIKeys | None:
    """The configured keys, or None when --allow-unauthenticated."""
    if args.api_keys_file is not None:
        return APIKeys(load_keys_from_file(args.api_keys_file))
    if args.api_keys_keyvault_url is not None:
        return APIKeys(load_keys_from_key_vault(args.api_keys_keyvault_url, args.api_keys_secret))
    return None


# ---- logging ---------------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Structured fields come from `extra={"fields": {...}}`."""

    def __init__(self, rank: int | str) -> None:
        super().__init__()
        self.rank = rank

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "rank": self.rank,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(rank: int | str) -> None:
    """JSON lines on stderr for every logger (uvicorn's included)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(rank))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


# ---- the HTTP rank's lifecycle -------------------------------------------------------------------------


@dataclass
class LifecycleConfig:
    host: str
    port: int
    drain_timeout_s: float


class _Server:
    """uvicorn.Server with a draining shutdown and an engine watchdog; `exit_code` is the result."""

    def __init__(self, app: Any, engine: Any, cfg: LifecycleConfig) -> None:
        import uvicorn

        self.app = app
        self.engine = engine
        self.cfg = cfg
        self.state = app.state.server
        self.exit_code = EXIT_OK
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        config = uvicorn.Config(
            app, host=cfg.host, port=cfg.port, lifespan="off", log_config=None, access_log=False,
            # Named, not "auto": the image installs neither uvloop nor httptools, so a dev venv that
            # has them (the gateway's extra) must not run a different server than production.
            loop="asyncio", http="h11",
            # Connections still open after the drain (idle keep-alives) or after the engine died
            # (failed requests sending their error) get this long to close.
            timeout_graceful_shutdown=DEAD_ENGINE_GRACE_S, timeout_keep_alive=5,
        )
        server = uvicorn.Server(config)
        # Our own signal handling: uvicorn's would stop at once and re-raise SIGTERM afterwards
        # (exit status 143 instead of 0).
        server.capture_signals = self._capture_signals  # type: ignore[method-assign]
        self.uvicorn = server

    @contextlib.contextmanager
    def _capture_signals(self) -> Generator[None, None, None]:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[RANK_LOST_SIGNAL] = signal.signal(RANK_LOST_SIGNAL, self._on_rank_lost)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        assert self._loop is not None
        if self._draining:
            log.warning("second signal: exiting without waiting for in-flight requests",
                        extra={"fields": {"signal": signal.Signals(signum).name}})
            self.uvicorn.should_exit = True
            self.uvicorn.force_exit = True
            return
        self._draining = True
        # Signal handlers run between bytecodes of the main thread; hand over to the loop.
        self._loop.call_soon_threadsafe(self._begin_drain, signum)

    def _on_rank_lost(self, signum: int, frame: FrameType | None) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._rank_lost)

    def _rank_lost(self) -> None:
        # Also mid-drain: the supervisor's report wins over SIGTERM, because the step loop may be
        # stuck in a collective with the dead rank and would never finish the drain.
        log.error("the supervisor reports that a tensor-parallel rank died; failing in-flight requests")
        self.engine.mark_dead("a tensor-parallel rank exited (reported by the supervisor)")
        self._exit_engine_failed()

    def _exit_engine_failed(self) -> None:
        if self.exit_code == EXIT_ENGINE_FAILED:
            return
        log.error("engine failed (a rank died or a collective timed out); exiting",
                  extra={"fields": {"in_flight": len(self.state.in_flight)}})
        self.exit_code = EXIT_ENGINE_FAILED
        self.state.draining = True
        # Not force_exit: the in-flight requests were failed by the engine and are sending their
        # error now; uvicorn closes what is still open after DEAD_ENGINE_GRACE_S.
        self.uvicorn.should_exit = True

    def _begin_drain(self, signum: int) -> None:
        log.info("draining", extra={"fields": {"signal": signal.Signals(signum).name,
                                                "in_flight": len(self.state.in_flight),
                                                "drain_timeout_s": self.cfg.drain_timeout_s}})
        self.state.draining = True
        self.engine.stop_admission()
        asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        while self.state.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(WATCH_INTERVAL_S / 4)
        if self.state.in_flight:
            log.warning("drain timeout: aborting in-flight requests",
                        extra={"fields": {"in_flight": len(self.state.in_flight)}})
            # Aborted streams end at the engine's next step (finish_reason "abort"), so their
            # connections close now instead of at uvicorn's graceful-shutdown timeout.
            self.state.abort_all()
            abort_deadline = time.monotonic() + ABORT_GRACE_S
            while self.state.in_flight and time.monotonic() < abort_deadline:
                await asyncio.sleep(WATCH_INTERVAL_S / 4)
        else:
            log.info("drained")
        self.uvicorn.should_exit = True

    async def _watch_engine(self) -> None:
        while not self.uvicorn.should_exit:
            if self.engine.is_dead:
                self._exit_engine_failed()
                return
            await asyncio.sleep(WATCH_INTERVAL_S)

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        watchdog = asyncio.ensure_future(self._watch_engine())
        try:
            try:
                await self.uvicorn.serve()
            except SystemExit:
                pass  # uvicorn exits this way when it cannot listen (e.g. the port is taken)
            if not self.uvicorn.started and self.exit_code == EXIT_OK:
                log.error("the HTTP listener did not start; see the previous error")
                self.exit_code = EXIT_ENGINE_FAILED
        finally:
            watchdog.cancel()
            self.state.prompts.close()
            try:
                await asyncio.wait_for(self.engine.shutdown(), ENGINE_SHUTDOWN_TIMEOUT_S)
            except Exception:
                log.exception("engine shutdown failed")
                self.exit_code = self.exit_code or EXIT_ENGINE_FAILED
        if self.engine.is_dead:
            self.exit_code = EXIT_ENGINE_FAILED
        log.info("exiting", extra={"fields": {"exit_code": self.exit_code}})
        return self.exit_code


async def serve_app(app: Any, engine: Any, cfg: LifecycleConfig) -> int:
    """Serve `app` (from `create_app`) until drained or the engine dies; returns the exit code."""
    return await _Server(app, engine, cfg).run()


# ---- engine start-up (the engine's own module owns the details) -----------------------------------------


def _engine_config(args: argparse.Namespace) -> Any:
    from .engine_config import EngineConfig

    # The settings that are engine fields pass through by name; unset ones leave EngineConfig's default.
    engine_fields = {f.name for f in dataclasses.fields(EngineConfig)}
    chosen = {f.name: getattr(args, f.name) for f in settings.settings_fields()
              if f.name in engine_fields and getattr(args, f.name) is not None}
    if args.cpu_widen_min_rows is not None:
        chosen["cpu_widen_min_rows"] = args.cpu_widen_min_rows
    return EngineConfig(
        model_dir=args.model_dir,
        model_name=args.model_name,
        # The step token budget must hold one decode token per batch slot.
        max_num_batched_tokens=max(defaults.MAX_NUM_BATCHED_TOKENS, args.max_batch_size),
        **chosen,
    )


async def _serve_rank0(args: argparse.Namespace, engine: Any, api_keys: APIKeys | None) -> int:
    from .server import create_app

    app = create_app(engine, engine.tokenizer, api_keys=api_keys, model_name=engine.model_name,
                     chat_template=args.chat_template_text, tool_call_parser=args.tool_call_parser,
                     embedding_service=load_embedding_service(args, engine))
    log.info("serving", extra={"fields": {"host": args.host, "port": args.port, "model": engine.model_name,
                                           "tp_size": args.tp_size, "auth": api_keys is not None}})
    return await serve_app(app, engine, LifecycleConfig(args.host, args.port, args.drain_timeout_s))


def _run_rank(args: argparse.Namespace) -> int:
    from .ranks import start_engine

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    configure_logging(rank)
    if world != args.tp_size:
        raise UsageError(f"--tp-size {args.tp_size} does not match the launcher's WORLD_SIZE {world}")
    api_keys = None
    if rank == 0:
        try:
            # Keys first: a wrong key source should fail in seconds, not after loading the model.
            api_keys = load_api_keys(args)
        except KeyLoadError as exc:
            log.error("cannot load API keys", extra={"fields": {"error": str(exc)}})
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        config = _engine_config(args)
        config.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    # Loads (and shards) the model on every rank. Followers run their step loop in here and
    # return None at shutdown (SystemExit(3) if rank 0 is lost).
    try:
        engine = start_engine(config)
    except ValueError as exc:  # what the config asks for does not fit this model or machine (the KV pool)
        raise UsageError(str(exc)) from None
    except StartupWaitTimeout as exc:
        log.error("start-up wait timed out", extra={"fields": {"error": str(exc)}})
        return EXIT_ENGINE_FAILED
    if engine is None:
        return EXIT_OK
    return asyncio.run(_serve_rank0(args, engine, api_keys))


# ---- entry point ----------------------------------------------------------------------------------------


def _make_model(model_args: Sequence[str]) -> int:
    from . import model_factory

    result = model_factory.main(list(model_args))
    return int(result or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 for usage errors, never a traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        if argv[:1] == ["make-model"]:
            # Everything after the subcommand belongs to the model factory's own parser.
            return _make_model(argv[1:])
        args = parser.parse_args(argv)
        validate_serve_args(args)
        if args.tp_size > 1 and "WORLD_SIZE" not in os.environ:
            configure_logging("supervisor")
            return run_ranks(args.tp_size, argv)
        code = _run_rank(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("run `python -m inference serve --help` for the options", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    # The server ran: exit now rather than wait on interpreter teardown of torch/DeepSpeed state
    # (seconds), or on a thread a library forgot to mark as daemon.
    exit_now(code)
    return code  # pragma: no cover
