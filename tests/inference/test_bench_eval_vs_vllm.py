"""inference.bench.eval_vs_vllm's own parts (lm-eval and vLLM themselves run by hand, not in CI): the local tasks
it writes, how it reads lm-eval's per-item output, and its argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from inference.bench import eval_vs_vllm


def test_the_tasks_are_seeded_and_lm_eval_shaped(tmp_path: Path) -> None:
    eval_vs_vllm.write_tasks(tmp_path / "a")
    eval_vs_vllm.write_tasks(tmp_path / "b")
    for name in ("mc.jsonl", "text.jsonl"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    mc = yaml.safe_load((tmp_path / "a" / "inferforge_mc.yaml").read_text())
    rolling = yaml.safe_load((tmp_path / "a" / "inferforge_rolling.yaml").read_text())
    assert (mc["output_type"], rolling["output_type"]) == ("multiple_choice", "loglikelihood_rolling")
    assert Path(mc["dataset_kwargs"]["data_files"]["test"]).is_file()
    items = [json.loads(line) for line in (tmp_path / "a" / "mc.jsonl").read_text().splitlines()]
    assert len(items) == 24 and all(len(i["choices"]) == 4 and 0 <= i["answer"] < 4 for i in items)


def test_per_item_loglikelihoods_are_read_from_lm_evals_samples(tmp_path: Path) -> None:
    # The shapes lm-eval 0.4 writes with --log_samples (strings, as it stores them).
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "samples_inferforge_mc_2026-01-01T00-00-00.jsonl").write_text(
        json.dumps({"doc_id": 0, "resps": [[["-92.5", "False"]], [["-83.25", "True"]]]}) + "\n"
        + json.dumps({"doc_id": 1, "resps": [[["-1.0", "False"]], [["-2.0", "False"]]]}) + "\n")
    (tmp_path / "m" / "samples_inferforge_rolling_2026-01-01T00-00-00.jsonl").write_text(
        json.dumps({"doc_id": 0, "resps": [["-19131.69"]]}) + "\n")
    assert eval_vs_vllm.per_item_loglikelihoods(tmp_path, "inferforge_mc") == {
        (0, 0): -92.5, (0, 1): -83.25, (1, 0): -1.0, (1, 1): -2.0}
    assert eval_vs_vllm.per_item_loglikelihoods(tmp_path, "inferforge_rolling") == {(0, 0): -19131.69}
    with pytest.raises(RuntimeError, match="no samples for other"):
        eval_vs_vllm.per_item_loglikelihoods(tmp_path, "other")


@pytest.mark.parametrize(("extra", "message"), [
    (["--max-length", "8"], "--max-length must be in 16..4096"),
    (["--ports", "9000", "9000"], "--ports needs two different ports"),
])
def test_bad_arguments_are_named(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    with pytest.raises(SystemExit) as exited:
        eval_vs_vllm.main(["--vllm-python", str(tool), "--lm-eval", str(tool), "--model", str(model), "--out",
                           str(tmp_path / "out"), *extra])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
