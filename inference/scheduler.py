"""Continuous-batching scheduler: which tokens every rank runs in the next forward.

Requests wait in a bounded FIFO queue and join the running batch between steps; finished or
aborted ones leave at the next step. Each step is bounded by a token budget
(`max_num_batched_tokens`): every decoding sequence contributes one token, and what remains goes
to prompt chunks (partially read prompts first, then newly admitted ones), so a long prompt is
prefilled over several steps while the others keep decoding. Each running sequence owns a slot of
the KV cache (see `inference.kv_cache`); the scheduler keeps decoding sequences in slots
`0..num_decode-1` so decode attention reads one contiguous view, and emits the few slot moves that
restore this layout when sequences finish or finish their prompt. The scheduler is pure Python on
rank 0; its `StepPlan` is what rank 0 broadcasts to the other ranks.

Why not transformers' own continuous batching (`transformers.generation.continuous_batching`,
transformers 5.23)? Findings from reading its source and trying it:

* Its tensor parallelism is transformers' native TP (`from_pretrained(tp_plan=...)` /
  `DistributedConfig` with a `DeviceMesh`). `DistributedHelper` learns the TP size from that mesh
  and the model's `tp_plan`; a model sharded by DeepSpeed AutoTP has neither, so every rank believes
  it is an unsharded TP driver with its own request queue and scheduler (divergent inputs hang the
  all-reduces), and `PagedAttentionCache` sizes its pages for the full `num_key_value_heads` while
  AutoTP's sharded `k_proj`/`v_proj` produce only `heads / tp_size` per rank. It does not compose
  with AutoTP without faking a device mesh and TP plan that DeepSpeed does not honour.
  Tried on the tiny model (2 CPU ranks, gloo, `model.generate_batch` after `init_inference`):
  TP=1 works (same greedy tokens as this engine), TP=2 fails on every rank in the cache write with
  "index_copy_(): ... Destination slice shape: 2 16 ... source slice shape: 1 16" (pages sized for
  2 KV heads, 1 per rank produced), and `generate_batch` then returns empty outputs without raising.
* Sampling is per batch, not per request: `do_sample` is fixed by the manager's generation config
  and the RNG is one global seed (`set_tp_seed`), so a request's sampled output depends on what
  else is in the batch and per-request seeds are impossible; per-request temperature/top_p only
  exist if the processors were created at start-up with non-default values.
* Admission blocks (`input_queue.put(block=True, timeout=10)`) instead of refusing with a bounded
  queue, and there is no per-request `ignore_eos` or rank-death handling hook.
So the scheduler here is our own; its KV layout borrows the packed-batch idea from vLLM.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .engine_api import FinishReason, SamplingParams


@dataclass(eq=False)
class Sequence:
    """One request's state on rank 0."""

    request_id: str
    prompt: list[int]
    params: SamplingParams
    deliver: Callable[[object], None] | None = None  # called with TokenEvent / exception (engine-owned)
    generator: torch.Generator | None = None  # per-request RNG when a seed was given
    constraint: Any = None  # per-sequence grammar matcher (inference.structured_output.Constraint)
    output: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache
    slot: int = -1
    aborted: bool = False
    finish_reason: FinishReason | None = None

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed < len(self.prompt)

    @property
    def total_len(self) -> int:
        return len(self.prompt) + len(self.output)


@dataclass
class PrefillWork:
    """A prompt chunk for one sequence in this step."""

    seq: Sequence
    start: int
    length: int

    @property
    def completes_prompt(self) -> bool:
        return self.start + self.length == len(self.seq.prompt)


@dataclass
class StepPlan:
    """Everything every rank needs to run one identical forward; rank 0 also keeps `decode`/`prefill`."""

    moves: list[tuple[int, int, int]]  # (src_slot, dst_slot, length) applied in order before the forward
    decode: list[Sequence]  # in slot order 0..len-1
    prefill: list[PrefillWork]
    freed: list[Sequence] = field(default_factory=list)  # left the batch before this step

    @property
    def num_tokens(self) -> int:
        return len(self.decode) + sum(p.length for p in self.prefill)


class Scheduler:
    """Admission, slot assignment and per-step token budgeting (rank 0 only)."""

    def __init__(self, max_batch_size: int, max_waiting: int, max_num_batched_tokens: int) -> None:
        if max_num_batched_tokens < max_batch_size:
            raise ValueError(
                f"max_num_batched_tokens ({max_num_batched_tokens}) must be >= max_batch_size "
                f"({max_batch_size}) so every running sequence can decode in each step"
            )
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._slots: list[Sequence | None] = [None] * max_batch_size

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        """Queue a sequence; the caller checked capacity (`can_admit`)."""
        self.waiting.append(seq)

    def can_admit(self) -> bool:
        return len(self.waiting) < self.max_waiting

    def abort_waiting(self, request_id: str) -> Sequence | None:
        """Remove a not-yet-running sequence; returns it (or None if it is not waiting)."""
        for seq in self.waiting:
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                return seq
        return None

    def schedule(self) -> StepPlan | None:
        """Drop finished sequences, compact slots, admit new ones; None when there is nothing to run."""
        freed = [s for s in self.running if s.finish_reason is not None or s.aborted]
        for seq in freed:
            self._slots[seq.slot] = None
            seq.slot = -1
        self.running = [s for s in self.running if s.slot >= 0]

        decoders = sorted((s for s in self.running if not s.is_prefilling), key=lambda s: s.slot)
        moves = self._compact(decoders)
        decoders.sort(key=lambda s: s.slot)
        budget = self.max_num_batched_tokens - len(decoders)

        prefill: list[PrefillWork] = []
        for seq in self.running:
            if seq.is_prefilling and budget > 0:
                length = min(len(seq.prompt) - seq.num_computed, budget)
                prefill.append(PrefillWork(seq, seq.num_computed, length))
                budget -= length
        while self.waiting and budget > 0 and len(self.running) < self.max_batch_size:
            seq = self.waiting.popleft()
            seq.slot = self._slots.index(None)  # lowest free slot, >= len(decoders) after compaction
            self._slots[seq.slot] = seq
            self.running.append(seq)
            length = min(len(seq.prompt), budget)
            prefill.append(PrefillWork(seq, 0, length))
            budget -= length

        if not decoders and not prefill:
            return None if not freed else StepPlan(moves, [], [], freed)
        return StepPlan(moves, decoders, prefill, freed)

    def _compact(self, decoders: list[Sequence]) -> list[tuple[int, int, int]]:
        """Assign decoders to slots 0..n-1 and prefilling sequences to slots >= n; return the moves."""
        n = len(decoders)
        target: dict[int, int] = {}  # id(seq) -> new slot
        taken = {s.slot for s in decoders if s.slot < n}
        free_low = iter(sorted(set(range(n)) - taken))
        for seq in decoders:
            target[id(seq)] = seq.slot if seq.slot < n else next(free_low)
        prefilling = [s for s in self.running if s.is_prefilling]
        taken_high = {s.slot for s in prefilling if s.slot >= n}
        free_high = iter(sorted(set(range(n, self.max_batch_size)) - taken_high))
        for seq in prefilling:
            target[id(seq)] = seq.slot if seq.slot >= n else next(free_high)

        pending = [s for s in self.running if target[id(s)] != s.slot]
        occupied: dict[int, Sequence] = {s.slot: s for s in self.running}
        moves: list[tuple[int, int, int]] = []
        scratch = self.max_batch_size
        while pending:
            ready = next((s for s in pending if target[id(s)] not in occupied), None)
            if ready is None:
                # Every destination is held by another mover: a cycle. Park one in the scratch slot.
                ready = pending[0]
                moves.append((ready.slot, scratch, ready.num_computed))
                del occupied[ready.slot]
                ready.slot = scratch
                occupied[scratch] = ready
                continue
            dst = target[id(ready)]
            moves.append((ready.slot, dst, ready.num_computed))
            del occupied[ready.slot]
            ready.slot = dst
            occupied[dst] = ready
            pending.remove(ready)
        self._slots = [None] * self.max_batch_size
        for seq in self.running:
            self._slots[seq.slot] = seq
        return moves
