"""Rank 0's `AsyncEngine`: admission, the step loop (schedule, forward on every rank, sample), token delivery.

Entry point for the serving process, called on every rank (inference/ranks.py)::

    engine = start_engine(EngineConfig(model_dir=...))   # launched as described in inference.distributed
    if engine is None:           # follower rank: ran the follower loop until shutdown
        sys.exit(0)
    engine.add_death_callback(lambda exc: os._exit(1))  # the server's choice: exit non-zero on rank death
    ... serve HTTP with `engine` (it implements inference.engine_api.AsyncEngine) ...
    await engine.shutdown()

The model itself (loading, sharding, the KV pool, one forward) is inference/model_runner.py; the config
inference/engine_config.py.

Threads: the step loop runs in a background thread on rank 0, so the HTTP event loop never waits on
a forward; token events are handed back to the event loop once per step.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import numba_jit, structured_output
from .block_manager import BlockManager
from .distributed import (
    CMD_HEARTBEAT,
    CMD_SHUTDOWN,
    CMD_STEP,
    StepChannel,
    Watchdog,
    WireStep,
)
from .engine_api import (
    EngineDeadError,
    EngineShuttingDownError,
    GenerationRequest,
    PromptLogprob,
    QueueFullError,
    TokenEvent,
)
from .engine_config import EngineConfig
from .model_runner import ModelRunner, model_eos_token_ids
from .sampling import sample_tokens
from .scheduler import LOGITS_ALL, LOGITS_LAST, Scheduler, Sequence, StepPlan

log = logging.getLogger("inferforge.engine")


_Item = TokenEvent | BaseException


class InferenceEngine:
    """Rank 0's engine: admission, the step loop thread, sampling, streaming (implements AsyncEngine)."""

    def __init__(self, cfg: EngineConfig, runner: ModelRunner, channel: StepChannel, tokenizer) -> None:
        self.cfg = cfg
        self.model_name = cfg.model_name or Path(cfg.model_dir).name
        self.max_model_len = runner.max_model_len
        self.dtype = runner.dtype  # resolved ("auto" becomes a concrete dtype)
        self.device = runner.device  # rank 0's
        self.tokenizer = tokenizer
        self.vocab_size = runner.vocab_size
        self._runner = runner
        self._channel = channel
        pool = runner.kv_pool
        self.kv_blocks = BlockManager(pool.num_blocks, pool.block_size, cfg.enable_prefix_caching)
        self._scheduler = Scheduler(cfg.max_batch_size, cfg.max_waiting, cfg.max_num_batched_tokens, self.kv_blocks)
        eos = cfg.eos_token_ids
        if eos is None:
            eos = model_eos_token_ids(cfg.model_dir, runner.hf_config)
        self.eos_token_ids: frozenset[int] = frozenset(eos)
        self._shared_generator = torch.Generator().manual_seed(cfg.seed)
        self._inbox: deque[Sequence] = deque()
        self._aborts: deque[str] = deque()
        self._live: dict[str, Sequence] = {}  # request_id -> sequence, touched on the event loop thread only
        self._wakeup = threading.Event()
        self._lock = threading.Lock()
        self._admitting = True
        self._stop_requested = False
        self._ready = False
        self._dead: BaseException | None = None
        self._death_callbacks: list[Callable[[BaseException], None]] = []
        self._step_id = 0
        self._watchdog = Watchdog(cfg.collective_timeout_s * 1.5, self._on_watchdog_expired)
        # The step thread computes with the intra-op thread count the loading thread was given
        # (OpenMP's setting is per thread; a new thread would start from the process default).
        self._num_threads = torch.get_num_threads()
        self._thread = threading.Thread(target=self._run, name="inferforge-engine", daemon=True)

    # ----- AsyncEngine -------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self._scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self._inbox) + len(self._scheduler.waiting)

    @property
    def num_preemptions(self) -> int:
        """Sequences preempted (and recomputed later) because the KV pool was full, since start."""
        return self._scheduler.num_preemptions

    @property
    def prefix_cache_hit_tokens(self) -> int:
        """Prompt tokens whose prefill was skipped because their K/V were in the prefix cache."""
        return self.kv_blocks.hits

    @property
    def prefix_cache_query_tokens(self) -> int:
        """Prompt tokens looked up in the prefix cache (0 with prefix caching off)."""
        return self.kv_blocks.queries

    @property
    def kv_cache_usage(self) -> float:
        """Share of the KV block pool in use by running sequences, 0..1."""
        return self.kv_blocks.usage

    @property
    def is_ready(self) -> bool:
        return self._ready and self._dead is None and self._thread.is_alive()

    @property
    def is_dead(self) -> bool:
        return self._dead is not None

    def add_death_callback(self, callback: Callable[[BaseException], None]) -> None:
        """Call `callback(error)` once (from an engine thread) when a rank dies or a step times out.

        Callbacks run before pending requests are failed with EngineDeadError, so they must not
        block for long; one that exits the process means the waiters never see the error."""
        self._death_callbacks.append(callback)
        if self._dead is not None:
            callback(self._dead)

    def validate_request(self, request: GenerationRequest) -> None:
        """Raise ValueError when the request cannot be served as given (HTTP 400)."""
        params = request.params
        prompt = request.prompt_token_ids
        if not prompt:
            raise ValueError("prompt_token_ids is empty; at least one token is required")
        if params.max_tokens < 0:  # 0: prefill only (echo, prompt logprobs); the HTTP layer says when it may be
            raise ValueError(f"max_tokens must be >= 0, got {params.max_tokens}")
        if len(prompt) + params.max_tokens > self.max_model_len:
            pool = self._runner.kv_pool
            why = ""
            if self.max_model_len == pool.capacity_tokens:
                why = (f" (all the KV cache holds: {pool.num_blocks} blocks of {pool.block_size} tokens; "
                       "the server's --kv-cache-memory sets it)")
            raise ValueError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the model's "
                f"context of {self.max_model_len} tokens{why}"
            )
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size})")
        if not params.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {params.temperature}")
        if not 0.0 < params.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {params.top_p}")
        if params.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables), got {params.top_k}")
        if not 0.0 <= params.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {params.min_p}")
        if params.logprobs is not None and not 0 <= params.logprobs <= self.vocab_size:
            raise ValueError(f"logprobs must be in [0, {self.vocab_size}] or None, got {params.logprobs}")
        if params.prompt_logprobs is not None and not 0 <= params.prompt_logprobs <= self.vocab_size:
            raise ValueError(f"prompt_logprobs must be in [0, {self.vocab_size}] or None, got {params.prompt_logprobs}")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Stream one request's tokens (see AsyncEngine.generate)."""
        if self._dead is not None:
            raise EngineDeadError(f"engine is dead: {self._dead}")
        if not self._admitting:
            raise EngineShuttingDownError("the server is shutting down and admits no new requests")
        self.validate_request(request)
        if request.request_id in self._live:
            raise ValueError(f"request_id {request.request_id!r} is already in flight")
        if self.num_waiting >= self.cfg.max_waiting:
            raise QueueFullError(self.cfg.retry_after_s)

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        seed = request.params.seed
        seq = Sequence(
            request_id=request.request_id,
            prompt=list(request.prompt_token_ids),
            params=request.params,
            generator=None if seed is None else torch.Generator().manual_seed(seed),
            constraint=None if request.params.grammar is None else request.params.grammar.new_constraint(),
        )
        seq.deliver = _Deliverer(loop, queue)  # type: ignore[assignment]
        self._live[request.request_id] = seq
        self._inbox.append(seq)
        self._wakeup.set()
        # Re-check after enqueueing: a death or shutdown that snapshotted the inbox just before the
        # append would otherwise leave this request waiting for events that never come.
        if self._dead is not None or self._stop_requested:
            self._live.pop(request.request_id, None)
            if self._dead is not None:
                raise EngineDeadError(f"engine is dead: {self._dead}")
            raise EngineShuttingDownError("the engine is shutting down")
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.finish_reason is not None:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            self._live.pop(request.request_id, None)
            if not finished:
                self.abort(request.request_id)

    def abort(self, request_id: str) -> None:
        """Stop a request; its KV blocks are freed at the next step and it ends with finish_reason "abort"."""
        self._aborts.append(request_id)
        self._wakeup.set()

    def stop_admission(self) -> None:
        self._admitting = False

    def mark_dead(self, reason: str) -> None:
        """See AsyncEngine.mark_dead; safe from any thread (the step thread may be stuck)."""
        self._declare_dead(RuntimeError(reason))

    async def shutdown(self) -> None:
        """Abort what is still running, release the follower ranks and stop the loop thread."""
        self._admitting = False
        self._stop_requested = True
        self._wakeup.set()
        self._watchdog.stop()
        # A dead engine's thread may be stuck inside a collective for good: do not wait for it.
        if self._thread.is_alive() and self._dead is None:
            await asyncio.to_thread(self._thread.join)

    # ----- step loop (engine thread) -----------------------------------------------------------
    def start(self) -> None:
        """Start the step loop thread (the model is loaded on every rank by now)."""
        if self.cfg.gil_switch_interval_s is not None:
            sys.setswitchinterval(self.cfg.gil_switch_interval_s)
        self._ready = True
        self._thread.start()

    def _run(self) -> None:
        # PyTorch initializes a thread's OpenMP setting lazily, at its first parallel op, from the
        # process-wide value, which any other thread may have changed by then: settle it now.
        torch.set_num_threads(self._num_threads)
        torch.get_num_threads()
        numba_jit.match_torch_threads()
        try:
            while True:
                self._wakeup.clear()
                self._drain_inbox()
                if self._stop_requested:
                    break
                plan = self._scheduler.schedule()
                if plan is None:
                    if not self._wakeup.wait(self.cfg.heartbeat_s):
                        self._guarded(self._channel.send, CMD_HEARTBEAT)
                    continue
                self._execute(plan)
            self._finish_all("abort")
            self._guarded(self._channel.send, CMD_SHUTDOWN)
        except BaseException as exc:  # a dead rank, a timed-out collective, or a bug: fail everything
            self._declare_dead(exc)

    def _guarded(self, fn: Callable, *args) -> object:
        """Run a collective or forward under the watchdog; raise if the engine was declared dead meanwhile."""
        self._watchdog.arm()
        try:
            return fn(*args)
        finally:
            self._watchdog.disarm()
            if self._dead is not None:
                raise EngineDeadError(str(self._dead))

    def _drain_inbox(self) -> None:
        while self._inbox:
            self._scheduler.add(self._inbox.popleft())
        while self._aborts:
            request_id = self._aborts.popleft()
            waiting = self._scheduler.abort_waiting(request_id)
            if waiting is not None:
                self._emit({waiting: TokenEvent(None, "abort")})
                continue
            for seq in self._scheduler.running:
                if seq.request_id == request_id and seq.finish_reason is None:
                    seq.aborted = True

    def _execute(self, plan: StepPlan) -> None:
        events: dict[Sequence, _Item] = {}
        for seq in plan.freed:
            if seq.aborted and seq.finish_reason is None:
                seq.finish_reason = "abort"
                events[seq] = TokenEvent(None, "abort")
        if plan.preempted:
            log.info("KV cache full: preempted %d sequence(s) for recomputation (%d so far)",
                     len(plan.preempted), self._scheduler.num_preemptions)
        if plan.num_tokens:
            wire = self._to_wire(plan)
            self._step_id += 1
            self._guarded(self._channel.send, CMD_STEP, wire, self._step_id)
            logits = self._guarded(self._runner.execute, wire)
            self._advance(plan, logits, events)
        self._emit(events)

    @staticmethod
    def _to_wire(plan: StepPlan) -> WireStep:
        token_ids = [seq.output[-1] for seq in plan.decode]
        positions = [seq.num_computed for seq in plan.decode]
        tables = [seq.block_table for seq in plan.decode]
        prefills = []
        for work in plan.prefill:
            token_ids.extend(work.seq.tokens(work.start, work.start + work.length))
            positions.extend(range(work.start, work.start + work.length))
            prefills.append((work.start, work.length, work.logits_rows))
            tables.append(work.seq.block_table)
        return WireStep(
            num_decode=len(plan.decode),
            prefills=prefills,
            block_tables=tables,
            token_ids=torch.tensor(token_ids, dtype=torch.int64),
            positions=torch.tensor(positions, dtype=torch.int64),
        )

    def _advance(self, plan: StepPlan, logits: torch.Tensor, events: dict[Sequence, _Item]) -> None:
        """Account the computed tokens, collect prompt logprobs, sample the next tokens, decide who finished."""
        for seq in plan.decode:
            seq.num_computed += 1
        # `logits` rows, in step order: one per decoder, then each chunk's last row or all its rows.
        sample_rows = list(range(len(plan.decode)))
        rows = list(plan.decode)
        prompt_rows: list[tuple[Sequence, int, int]] = []  # (sequence, logits row, prompt position it predicts)
        at = len(plan.decode)
        for work in plan.prefill:
            seq = work.seq
            mode = work.logits_rows
            if mode == LOGITS_ALL:
                for j in range(work.length):
                    target = work.start + j + 1
                    if len(seq.prompt_logprobs) < target < len(seq.prompt):
                        prompt_rows.append((seq, at + j, target))
                at += work.length
            elif mode == LOGITS_LAST:
                at += 1
            if work.wants_logits and seq.params.max_tokens > 0:
                sample_rows.append(at - 1)
                rows.append(seq)
            seq.num_computed += work.length
        if prompt_rows:
            _collect_prompt_logprobs(logits, prompt_rows)
        for work in plan.prefill:
            seq = work.seq
            if work.wants_logits and seq.params.max_tokens == 0 and not seq.aborted:
                # Prefill only (prompt logprobs): done, nothing to sample.
                seq.finish_reason = "length"
                events[seq] = TokenEvent(None, "length", prompt_logprobs=tuple(seq.prompt_logprobs))
        if not rows:
            return
        if len(sample_rows) != logits.shape[0]:
            logits = logits.index_select(0, torch.tensor(sample_rows, dtype=torch.long))
        constraints = [s.constraint for s in rows]
        tokens = sample_tokens(
            structured_output.constrain_logits(logits, constraints, self.eos_token_ids)
            if any(c is not None for c in constraints) else logits,
            [s.params.temperature for s in rows],
            [s.params.top_p for s in rows],
            [s.generator for s in rows],
            self._shared_generator,
            top_ks=[s.params.top_k for s in rows],
            min_ps=[s.params.min_p for s in rows],
        )
        logprobs = _token_logprobs(logits, rows, tokens)
        eos = self.eos_token_ids
        for i, (seq, token) in enumerate(zip(rows, tokens, strict=True)):
            if seq.aborted:
                continue  # freed (with an abort event) at the next schedule()
            first = not seq.output
            seq.output.append(token)
            reason = None
            if token in eos and not seq.params.ignore_eos:
                reason = "stop"
            elif seq.constraint is not None and _grammar_complete(seq.constraint, token):
                reason = "stop"
            elif len(seq.output) >= seq.params.max_tokens or seq.total_len >= self.max_model_len:
                reason = "length"
            seq.finish_reason = reason
            logprob, top = logprobs.get(i, (None, ()))
            prompt = tuple(seq.prompt_logprobs) if first and seq.params.prompt_logprobs is not None else None
            events[seq] = TokenEvent(token, reason, logprob, top, prompt)

    def _emit(self, events: dict[Sequence, _Item]) -> None:
        """Hand events to their event loops: one thread-safe call per loop per step."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, _Item]]] = {}
        for seq, item in events.items():
            deliverer = seq.deliver
            if isinstance(deliverer, _Deliverer):
                by_loop.setdefault(deliverer.loop, []).append((deliverer.queue, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:
                pass  # the loop is closed: nobody is listening any more

    def _finish_all(self, reason: str) -> None:
        pending = list(self._scheduler.running) + list(self._scheduler.waiting) + list(self._inbox)
        self._scheduler.running.clear()
        self._scheduler.waiting.clear()
        self._inbox.clear()
        self._emit({seq: TokenEvent(None, "abort") for seq in pending if seq.finish_reason is None})

    def _on_watchdog_expired(self, elapsed_s: float) -> None:
        self._declare_dead(TimeoutError(f"a step or collective has not completed after {elapsed_s:.1f}s"))

    def _declare_dead(self, exc: BaseException) -> None:
        with self._lock:
            if self._dead is not None:
                return
            self._dead = exc
            self._ready = False
        log.error("engine dead: %s: %s", type(exc).__name__, exc)
        # Callbacks before the waiters are released: whoever sees EngineDeadError can rely on the
        # callbacks having run (the other order raced with the event loop waking up).
        for callback in list(self._death_callbacks):
            try:
                callback(exc)
            except Exception:
                log.exception("death callback failed")
        error = EngineDeadError(f"a rank died or a collective timed out: {exc}")
        pending = list(self._scheduler.running) + list(self._scheduler.waiting) + list(self._inbox)
        self._emit({seq: error for seq in pending if seq.finish_reason is None})


def _grammar_complete(constraint: structured_output.Constraint, token: int) -> bool:
    """Advance a sequence's grammar past its new token; True once nothing but the end may follow."""
    constraint.accept(token)
    return constraint.finished


# JSON has no -inf; vLLM reports impossible tokens with this floor too.
MIN_LOGPROB = -9999.0


def _token_logprobs(logits: torch.Tensor, rows: list[Sequence], tokens: list[int]
                    ) -> dict[int, tuple[float, tuple[tuple[int, float], ...]]]:
    """Row index -> (sampled token's logprob, top-k (id, logprob)) for the rows that asked for them."""
    wanted = [i for i, seq in enumerate(rows) if seq.params.logprobs is not None]
    if not wanted:
        return {}
    index = torch.tensor(wanted, dtype=torch.long)
    logprobs = torch.log_softmax(logits.index_select(0, index).float(), dim=-1).clamp_(min=MIN_LOGPROB)
    chosen = logprobs.gather(1, torch.tensor([[tokens[i]] for i in wanted])).squeeze(1).tolist()
    k = max(rows[i].params.logprobs or 0 for i in wanted)
    top_values, top_ids = logprobs.topk(k, dim=-1) if k else (None, None)
    out = {}
    for j, i in enumerate(wanted):
        want_k = rows[i].params.logprobs or 0
        top: tuple[tuple[int, float], ...] = ()
        if want_k:
            top = tuple(zip(top_ids[j, :want_k].tolist(), top_values[j, :want_k].tolist(), strict=True))
        out[i] = (chosen[j], top)
    return out


def _collect_prompt_logprobs(logits: torch.Tensor, prompt_rows: list[tuple[Sequence, int, int]]) -> None:
    """Append each prompt position's PromptLogprob to its sequence (positions arrive in order, chunk by chunk)."""
    index = torch.tensor([row for _, row, _ in prompt_rows], dtype=torch.long)
    logprobs = torch.log_softmax(logits.index_select(0, index), dim=-1).clamp_(min=MIN_LOGPROB)
    targets = torch.tensor([[seq.prompt[position]] for seq, _, position in prompt_rows])
    chosen = logprobs.gather(1, targets)
    ranks = ((logprobs > chosen).sum(dim=1) + 1).tolist()
    chosen_list = chosen.squeeze(1).tolist()
    k = max(seq.params.prompt_logprobs or 0 for seq, _, _ in prompt_rows)
    top_values, top_ids = logprobs.topk(k, dim=-1) if k else (None, None)
    for j, (seq, _, _) in enumerate(prompt_rows):
        want_k = seq.params.prompt_logprobs or 0
        top: tuple[tuple[int, float], ...] = ()
        if want_k:
            top = tuple(zip(top_ids[j, :want_k].tolist(), top_values[j, :want_k].tolist(), strict=True))
        seq.prompt_logprobs.append(PromptLogprob(chosen_list[j], ranks[j], top))


@dataclass(frozen=True)
class _Deliverer:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


def _put_all(items: list[tuple[asyncio.Queue, _Item]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)
