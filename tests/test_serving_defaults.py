"""Serving defaults have one owner (inference/defaults.py): the server CLI, EngineConfig, the Kubernetes
component and the stack config agree with it, and the platform side can import it without torch."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from inferforge.components.inference_service import SERVING_PORT, InferenceServiceArgs
from inferforge.stacks.config import InferenceConfig

from inference import defaults
from inference.engine import EngineConfig
from inference.serve import build_parser

REPO = Path(__file__).resolve().parents[1]


def _field_defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def test_importing_the_defaults_or_the_platform_side_loads_no_ml_stack() -> None:
    script = (
        "import json, sys\n"
        "import inferforge.inference.defaults, inferforge.components.inference_service, inferforge.stacks.config\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'deepspeed', 'transformers', 'numpy', 'safetensors'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_the_server_cli_defaults_are_the_shared_ones(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--model-dir", str(tmp_path)])
    assert (args.tp_size, args.dtype, args.port) == (defaults.TP_SIZE, defaults.DTYPE, defaults.PORT)
    assert (args.max_batch_size, args.max_waiting) == (defaults.MAX_BATCH_SIZE, defaults.MAX_WAITING)
    assert args.max_model_len is None  # the model's own, lowered to what the KV pool holds
    assert args.drain_timeout == defaults.DRAIN_TIMEOUT_S
    assert args.tool_call_parser == defaults.TOOL_CALL_PARSER


@pytest.fixture(scope="module")
def serve_help() -> dict[str, str]:
    """`python -m inference serve --help`, one line per option (a wide terminal: no wrapping)."""
    result = subprocess.run([sys.executable, "-m", "inference", "serve", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "COLUMNS": "1000"})
    assert result.returncode == 0, result.stderr
    options: dict[str, str] = {}
    flag = None
    for line in result.stdout.splitlines():
        if line.startswith("  -"):  # an option, its help on the same line or the lines below
            flag = line.split()[0]
            options[flag] = line
        elif flag is not None and line.startswith("    "):
            options[flag] += " " + line.strip()
        else:
            flag = None
    return options


@pytest.mark.parametrize(("flag", "value"), [
    ("--tp-size", defaults.TP_SIZE), ("--dtype", defaults.DTYPE), ("--port", defaults.PORT),
    ("--max-batch-size", defaults.MAX_BATCH_SIZE), ("--max-waiting", defaults.MAX_WAITING),
    ("--block-size", defaults.KV_BLOCK_SIZE), ("--gpu-memory-utilization", defaults.GPU_MEMORY_UTILIZATION),
    ("--drain-timeout", defaults.DRAIN_TIMEOUT_S),
    ("--tool-call-parser", defaults.TOOL_CALL_PARSER),
    ("--embeddings-pooling", f"{defaults.EMBEDDINGS_POOLING_SERVED} with --embeddings served"),
    ("--embeddings-pooling", f"{defaults.EMBEDDINGS_POOLING_MODEL_DIR} with --embeddings-model-dir"),
])
def test_serve_help_states_each_shared_default(serve_help: dict[str, str], flag: str, value: object) -> None:
    stated = re.search(r"\(default ([^)]*)\)", serve_help[flag])
    assert stated and re.search(rf"(^|, ){re.escape(str(value))}($|,)", stated.group(1)), serve_help[flag]


def test_engine_config_defaults_are_the_shared_ones() -> None:
    engine = _field_defaults(EngineConfig)
    assert engine["dtype"] == defaults.DTYPE
    assert (engine["max_batch_size"], engine["max_waiting"]) == (defaults.MAX_BATCH_SIZE, defaults.MAX_WAITING)
    assert engine["max_num_batched_tokens"] == defaults.MAX_NUM_BATCHED_TOKENS
    assert engine["max_model_len"] is None


def test_component_args_defaults_are_the_shared_ones() -> None:
    component = _field_defaults(InferenceServiceArgs)
    assert (component["tp_size"], component["dtype"]) == (defaults.TP_SIZE, defaults.DTYPE)
    assert (component["max_batch_size"], component["max_waiting"]) == (defaults.MAX_BATCH_SIZE, defaults.MAX_WAITING)
    assert component["max_model_len"] is None
    assert component["drain_timeout_s"] == defaults.DRAIN_TIMEOUT_S
    assert component["tool_call_parser"] == defaults.TOOL_CALL_PARSER
    assert component["embeddings_pooling"] == defaults.EMBEDDINGS_POOLING_SERVED  # the component serves `served`
    assert SERVING_PORT == defaults.PORT


def test_stack_config_defaults_are_the_shared_ones() -> None:
    config = {name: field.default for name, field in InferenceConfig.model_fields.items()}
    assert (config["tp_size"], config["dtype"]) == (defaults.TP_SIZE, defaults.DTYPE)
    assert config["max_batch_size"] == defaults.MAX_BATCH_SIZE
    # The config prices the KV cache before deploying, so it needs a number: the engine's cap.
    assert config["max_model_len"] == defaults.STACK_MAX_MODEL_LEN
    assert config["drain_timeout_seconds"] == defaults.DRAIN_TIMEOUT_S
    assert config["tool_call_parser"] == defaults.TOOL_CALL_PARSER
    assert config["embeddings_pooling"] == defaults.EMBEDDINGS_POOLING_SERVED


def test_the_component_passes_every_serving_default_explicitly() -> None:
    """The pod runs what the plan shows, whatever defaults the image's CLI was built with."""
    from tests.platform.test_inference_service import manifests, prod_args, render_service, server_container

    command = server_container(manifests(render_service(prod_args(tp_size=defaults.TP_SIZE, autoscaling=None))))[
        "command"]
    flags = dict(zip(command[4::2], command[5::2], strict=True))
    assert flags["--tp-size"] == str(defaults.TP_SIZE) and flags["--dtype"] == defaults.DTYPE
    assert flags["--max-batch-size"] == str(defaults.MAX_BATCH_SIZE)
    assert flags["--max-waiting"] == str(defaults.MAX_WAITING)
    assert flags["--drain-timeout"] == str(defaults.DRAIN_TIMEOUT_S)
    assert flags["--tool-call-parser"] == defaults.TOOL_CALL_PARSER
    assert flags["--port"] == str(defaults.PORT)
