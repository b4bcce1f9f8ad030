"""Tensor parallelism across 2 CPU processes (gloo + DeepSpeed shm all-reduce), and rank death.

Ranks are started the way the DeepSpeed launcher starts them: one process per rank with RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_SIZE, MASTER_ADDR and MASTER_PORT set.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from inference.distributed import FOLLOWER_FAILURE_EXIT_CODE
from inference.engine_probe import DEAD_EXIT_CODE

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# fp32 logits of TP=2 differ from TP=1 only by summation order: o_proj, down_proj and lm_head each
# add two half-sums (one per rank) instead of one full sum. With fp32's unit roundoff of 6e-8 and
# a few hundred terms per reduction, that is ~1e-6 relative per layer; on logits of magnitude ~20
# the observed difference is ~7e-6. 1e-4 absolute (+1e-5 relative) leaves 10x headroom and is still
# far below the smallest top-2 logit gap of the tiny model (>1e-3), so it cannot hide a wrong shard.
LOGITS_ATOL = 1e-4
LOGITS_RTOL = 1e-5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def ranks(args: list[str], world_size: int, log_dir: Path, port: int | None = None
          ) -> Iterator[list[subprocess.Popen]]:
    """Start `python -m inference.engine_probe ARGS` once per rank; kill leftovers on exit."""
    port = port or free_port()
    procs: list[subprocess.Popen] = []
    try:
        for rank in range(world_size):
            env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
            for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT"):
                env.pop(name, None)
            if world_size > 1:
                env.update(
                    RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_SIZE=str(world_size),
                    MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                )
            log = open(log_dir / f"rank{rank}.log", "w")  # noqa: SIM115 - closed with the process
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "inference.engine_probe", *args],
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            ))
            log.close()
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def wait_all(procs: list[subprocess.Popen], timeout_s: float, log_dir: Path) -> None:
    deadline = time.monotonic() + timeout_s
    for rank, proc in enumerate(procs):
        try:
            code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank {rank} still running after {timeout_s}s:\n{tail(log_dir / f'rank{rank}.log')}")
        assert code == 0, f"rank {rank} exited {code}:\n{tail(log_dir / f'rank{rank}.log')}"


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_for_line(path: Path, text: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"process exited {proc.returncode} before printing {text!r}:\n{tail(path)}")
        time.sleep(0.1)
    pytest.fail(f"no {text!r} after {timeout_s}s:\n{tail(path)}")


def run_probe(model_dir: Path, world_size: int, tmp_path: Path) -> dict:
    out = tmp_path / f"tp{world_size}.json"
    log_dir = tmp_path / f"logs{world_size}"
    log_dir.mkdir()
    # A 3 s collective timeout with 7 s of idling after start: only rank 0's heartbeats keep the
    # follower waiting instead of timing out.
    args = ["--model", str(model_dir), "--dtype", "float32", "--steps", "8", "--out", str(out),
            "--collective-timeout", "3", "--idle-s", "7"]
    port = free_port()
    with ranks(args, world_size, log_dir, port) as procs:
        wait_all(procs, 240, log_dir)
    # Where DeepSpeed's shm all-reduce op is built, its per-rank /dev/shm workspaces were used; their
    # names must not outlive the ranks (inference/shm_op.py unlink_buffer).
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def probes(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """The probe's results at TP 1 and TP 2 (each run once for the tests below)."""
    tmp_path = tmp_path_factory.mktemp("probes")
    return run_probe(tiny_model_dir, 1, tmp_path), run_probe(tiny_model_dir, 2, tmp_path)


def test_tp2_gives_the_same_greedy_tokens_and_close_logits_as_tp1(probes: tuple[dict, dict], tiny_model_dir: Path
                                                                   ) -> None:
    tp1, tp2 = probes

    assert tp2["world_size"] == 2
    # AutoTP sharded the projections, and each rank fused its own q/k/v and gate/up shards.
    assert (tp1["q_proj_class"], tp2["q_proj_class"]) == ("Linear", "LinearLayer")
    layers = AutoConfig.from_pretrained(tiny_model_dir).num_hidden_layers
    for result in (tp1, tp2):
        assert (result["fused_attention_layers"], result["fused_mlp_layers"]) == (layers, layers)
    assert tp2["raw_tokens"] == tp1["raw_tokens"]
    assert tp2["engine_tokens"] == tp1["engine_tokens"]  # continuous batching under TP=2
    assert tp1["engine_tokens"] == tp1["raw_tokens"]  # the batched engine matches single-slot steps
    torch.testing.assert_close(
        torch.tensor(tp2["raw_logits"]), torch.tensor(tp1["raw_logits"]), atol=LOGITS_ATOL, rtol=LOGITS_RTOL
    )
    # Paged KV under TP=2: prompts served from the prefix cache, and a preempted and recomputed
    # request, give the tokens of their uncached, unbatched raw runs; every block is free at the end.
    for result in (tp1, tp2):
        assert result["prefix_hit_tokens"] == 4 * 32  # two full 16-token blocks of the shared prefix, per prompt
        assert result["preemptions"] >= 1
        assert result["shared_tokens"] == tp1["raw_shared_tokens"]
        assert result["long_tokens"] == tp1["raw_long_tokens"]
        assert result["free_blocks_after"] == result["num_blocks"]
    assert tp2["raw_shared_tokens"] == tp1["raw_shared_tokens"] and tp2["raw_long_tokens"] == tp1["raw_long_tokens"]


@pytest.mark.parametrize(("victim", "survivor", "expected_code"), [(1, 0, DEAD_EXIT_CODE),
                                                                   (0, 1, FOLLOWER_FAILURE_EXIT_CODE)])
def test_a_killed_rank_makes_the_other_rank_exit_non_zero_instead_of_hanging(
    tiny_model_dir: Path, tmp_path: Path, victim: int, survivor: int, expected_code: int
) -> None:
    timeout_s = 4.0
    args = ["--model", str(tiny_model_dir), "--mode", "serve-until-dead", "--collective-timeout", str(timeout_s)]
    with ranks(args, 2, tmp_path) as procs:
        wait_for_line(tmp_path / "rank0.log", "READY", procs[0], 180)
        time.sleep(0.5)  # let a few steps run so the kill lands mid-generation
        procs[victim].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            code = procs[survivor].wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank {survivor} hung after rank {victim} died:\n{tail(tmp_path / f'rank{survivor}.log')}")
        elapsed = time.monotonic() - killed_at

    assert code == expected_code, tail(tmp_path / f"rank{survivor}.log")
    # Bounded by the watchdog (1.5 x collective timeout) plus polling, far below "forever".
    assert elapsed < 2 * timeout_s + 5
    if survivor == 0:
        assert "DEAD" in (tmp_path / "rank0.log").read_text()


def test_prompt_logprobs_at_tp1_and_tp2_are_the_unbatched_forwards_and_transformers(
        probes: tuple[dict, dict], tiny_model_dir: Path) -> None:
    """Prompt logprobs come from the engine's chunked, batched prefill (a cached prefix recomputed, another request
    decoding beside it), at TP 1 and 2: equal to one unbatched forward over the prompt, and to transformers."""
    from transformers import AutoModelForCausalLM

    from inference.engine_probe import PROMPT_LOGPROBS_K

    tp1, tp2 = probes
    prompt = tp1["prompt_logprobs_prompt"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        reference = torch.log_softmax(model(torch.tensor([prompt])).logits[0, :-1], dim=-1)
    expected = reference.gather(1, torch.tensor(prompt[1:]).unsqueeze(1)).squeeze(1)
    for result in (tp1, tp2):
        entries = result["prompt_logprobs"]
        assert len(entries) == len(prompt) - 1
        got = torch.tensor([logprob for logprob, _, _ in entries])
        torch.testing.assert_close(got, torch.tensor(result["raw_prompt_logprobs"]), atol=LOGITS_ATOL, rtol=0)
        torch.testing.assert_close(got, expected, atol=LOGITS_ATOL, rtol=0)
        ranks = [rank for _, rank, _ in entries]
        assert ranks == (reference > expected.unsqueeze(1)).sum(dim=1).add(1).tolist()
        tops = [top for _, _, top in entries]
        assert all(len(top) == PROMPT_LOGPROBS_K for top in tops)
        assert [top[0] for top in tops] == reference.argmax(dim=1).tolist()
        assert result["decoded_beside"] == tp1["raw_tokens"][0]  # the request decoding beside it was not disturbed
