"""Continuous-batching scheduler: which tokens every rank runs in the next forward.

Requests wait in a bounded FIFO queue and join the running batch between steps; finished or
aborted ones leave at the next step. Each step is bounded by a token budget
(`max_num_batched_tokens`): every decoding sequence contributes one token, and what remains goes
to prompt chunks (partially read prompts first, then newly admitted ones), so a long prompt is
prefilled over several steps while the others keep decoding.

KV memory is a pool of blocks (`inference.kv_cache`, books kept by `inference.block_manager`):
a request is admitted only when the blocks for its prompt plus one decode token are free (after
counting the prompt's prefix already in the prefix cache, which it skips); a decoding sequence takes
one more block each time it crosses a block boundary. When none is free, the youngest running
sequence is preempted by recomputation (vLLM's default): its blocks are freed and it goes back to
the front of the queue, to prefill its prompt and the tokens it already generated when blocks are
free again; its client sees no difference but a pause. The scheduler is pure Python on rank 0; its
`StepPlan` (with every row's block table) is what rank 0 broadcasts to the other ranks.

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

from .block_manager import BlockManager, prompt_block_hashes
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
    prefill_len: int = -1  # tokens to compute before decoding: the prompt, + output[:-1] after a preemption
    block_table: list[int] = field(default_factory=list)  # KV pool blocks holding positions 0, 1, ...
    block_hashes: list[bytes] | None = None  # prefix-cache keys of the prompt's full blocks
    num_registered: int = 0  # full prompt blocks already offered to the prefix cache
    arrival: int = -1  # admission order (set by the scheduler); the largest is preempted first
    num_preemptions: int = 0
    aborted: bool = False
    finish_reason: FinishReason | None = None
    prompt_logprobs: list[Any] = field(default_factory=list)  # PromptLogprob of prompt tokens 1, 2, ... so far

    @property
    def needs_prompt_logits(self) -> bool:
        """Asked for prompt logprobs and not all collected yet (a preempted sequence keeps what it has)."""
        return self.params.prompt_logprobs is not None and len(self.prompt_logprobs) < len(self.prompt) - 1

    def __post_init__(self) -> None:
        if self.prefill_len < 0:
            self.prefill_len = len(self.prompt)

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed < self.prefill_len

    @property
    def total_len(self) -> int:
        return len(self.prompt) + len(self.output)

    def tokens(self, start: int, end: int) -> list[int]:
        """Token ids at positions start..end-1 (prompt, then generated tokens)."""
        if end <= len(self.prompt):
            return self.prompt[start:end]
        return (self.prompt + self.output)[start:end]


LOGITS_NONE, LOGITS_LAST, LOGITS_ALL = 0, 1, 2
"""Which rows of a prefill chunk the forward keeps logits for (inference/model_runner.py reads them off the wire)."""
PROMPT_LOGPROB_ROWS_PER_STEP = 256
"""Most prompt rows whose logits one step keeps for prompt logprobs (each a vocabulary of float32: 256 rows of a
152k vocabulary are 156 MB): a long prompt's logprobs are computed over several steps, beside the other
sequences' decode tokens, instead of one step that holds everything up."""


@dataclass
class PrefillWork:
    """A chunk of tokens to prefill for one sequence in this step."""

    seq: Sequence
    start: int
    length: int

    @property
    def completes_prefill(self) -> bool:
        return self.start + self.length == self.seq.prefill_len

    @property
    def wants_logits(self) -> bool:
        """The chunk ends the prompt: its last row's logits give the first generated token.

        A sequence re-prefilling after a preemption already has that token (and every later one).
        """
        return self.completes_prefill and not self.seq.output

    @property
    def logits_rows(self) -> int:
        """Which rows' logits the forward keeps (the wire's value): LOGITS_ALL for a chunk whose prompt logprobs are
        wanted, LOGITS_LAST for one that ends the prompt, LOGITS_NONE otherwise."""
        if self.seq.needs_prompt_logits:
            return LOGITS_ALL
        return LOGITS_LAST if self.wants_logits else LOGITS_NONE


@dataclass
class StepPlan:
    """Everything every rank needs to run one identical forward; rank 0 also keeps `decode`/`prefill`."""

    decode: list[Sequence]
    prefill: list[PrefillWork]
    freed: list[Sequence] = field(default_factory=list)  # left the batch before this step
    preempted: list[Sequence] = field(default_factory=list)  # sent back to the queue before this step

    @property
    def num_tokens(self) -> int:
        return len(self.decode) + sum(p.length for p in self.prefill)


class Scheduler:
    """Admission against free KV blocks, preemption, and per-step token budgeting (rank 0 only)."""

    def __init__(self, max_batch_size: int, max_waiting: int, max_num_batched_tokens: int,
                 blocks: BlockManager) -> None:
        if max_num_batched_tokens < max_batch_size:
            raise ValueError(
                f"max_num_batched_tokens ({max_num_batched_tokens}) must be >= max_batch_size "
                f"({max_batch_size}) so every running sequence can decode in each step"
            )
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        self.max_num_batched_tokens = max_num_batched_tokens
        self.blocks = blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._arrivals = 0
        self.num_preemptions = 0

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
        """Free finished sequences, grow or preempt decoders, admit new ones; None when idle."""
        blocks = self.blocks
        freed = [s for s in self.running if s.finish_reason is not None or s.aborted]
        for seq in freed:
            # Its last step's K/V are written: offer them before freeing, or a request that ends at its
            # first token (max_tokens=1, a classifier call) never leaves its prompt in the cache.
            self._offer_to_prefix_cache(seq)
            blocks.free(seq.block_table)
        self.running = [s for s in self.running if s.finish_reason is None and not s.aborted]
        for seq in self.running:
            self._offer_to_prefix_cache(seq)

        preempted: list[Sequence] = []
        decoders: list[Sequence] = []
        # Oldest first (running is in admission order), so the victims, the youngest, come later.
        for seq in [s for s in self.running if not s.is_prefilling]:
            if seq in preempted:
                continue  # preempted for an older sequence's block
            # The decode token is written at position num_computed.
            while len(seq.block_table) * blocks.block_size <= seq.num_computed:
                if blocks.num_free:
                    blocks.append_block(seq.block_table)
                    continue
                victim = max(self.running, key=lambda s: s.arrival)
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            if seq not in preempted:
                decoders.append(seq)
        budget = self.max_num_batched_tokens - len(decoders)

        prefill: list[PrefillWork] = []
        logit_rows = PROMPT_LOGPROB_ROWS_PER_STEP
        for seq in self.running:
            if seq.is_prefilling and budget > 0 and (logit_rows > 0 or not seq.needs_prompt_logits):
                length = min(seq.prefill_len - seq.num_computed, budget)
                if seq.needs_prompt_logits:
                    length = min(length, logit_rows)
                    logit_rows -= length
                prefill.append(PrefillWork(seq, seq.num_computed, length))
                budget -= length
        while self.waiting and budget > 0 and len(self.running) < self.max_batch_size:
            seq = self.waiting[0]
            if seq.needs_prompt_logits and logit_rows <= 0:
                break  # FIFO: this step's prompt-logprob rows are taken; it starts in the next one
            if seq.block_hashes is None:
                caching = blocks.enable_prefix_caching
                seq.block_hashes = prompt_block_hashes(seq.prompt, blocks.block_size) if caching else []
            # Prompt logprobs need every prompt row computed: such a prompt skips no cached prefix (its own
            # blocks are still offered to the cache for later requests).
            cached = [] if seq.needs_prompt_logits else blocks.cached_prefix(seq.block_hashes, seq.prefill_len)
            # Blocks for the whole prefill plus the first decode token: a running prompt never waits for memory.
            if blocks.blocks_needed(cached, seq.prefill_len + 1) > blocks.num_free:
                break  # FIFO: later requests wait behind it, as in vLLM
            self.waiting.popleft()
            seq.block_table = blocks.allocate(cached, seq.prefill_len + 1, prompt_len=seq.prefill_len)
            seq.num_computed = len(cached) * blocks.block_size
            seq.num_registered = len(cached)
            self._arrivals += 1
            seq.arrival = self._arrivals
            self.running.append(seq)
            length = min(seq.prefill_len - seq.num_computed, budget)
            if seq.needs_prompt_logits:
                length = min(length, logit_rows)
                logit_rows -= length
            prefill.append(PrefillWork(seq, seq.num_computed, length))
            budget -= length

        if not decoders and not prefill:
            return None if not (freed or preempted) else StepPlan([], [], freed, preempted)
        return StepPlan(decoders, prefill, freed, preempted)

    def _offer_to_prefix_cache(self, seq: Sequence) -> None:
        """Register the prompt blocks whose K/V the last step completed."""
        if not seq.block_hashes:
            return
        full = min(seq.num_computed, len(seq.prompt)) // self.blocks.block_size
        if full > seq.num_registered:
            self.blocks.register(seq.block_table, seq.block_hashes, full)
            seq.num_registered = full

    def _preempt(self, seq: Sequence) -> None:
        """Free a running sequence's blocks and queue it first, to recompute its K/V later."""
        self.blocks.free(seq.block_table)
        self.running.remove(seq)
        seq.num_computed = 0
        seq.num_registered = 0
        # The last generated token is the next decode input; everything before it is recomputed.
        seq.prefill_len = len(seq.prompt) + max(len(seq.output) - 1, 0)
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
