"""Every serving setting is declared once (inference/settings.py): the server's flags, the engine's config, the
Kubernetes component's arguments and argv, and the stack config's `inference` section are generated from that
declaration, agree with it, and pick up a setting added to it. The platform side imports it without torch."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from inferforge.components.inference_service import SERVING_PORT, InferenceServiceArgs, InferenceServiceConfigError
from inferforge.components.limits import ArgsOutOfLimits, check_limits, limits_of
from inferforge.stacks.component_sections import embed
from inferforge.stacks.config import ConfigError, InferenceConfig, _Section
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from inference import defaults, settings
from inference.engine_config import EngineConfig
from inference.model_runner import DTYPES
from inference.serve import UsageError, _engine_config, build_parser
from inference.settings import ServingSettings, settings_fields
from inference.tool_calls import FORMATS

REPO = Path(__file__).resolve().parents[1]
FIELDS = settings_fields()
NAMES = [f.name for f in FIELDS]


def test_importing_the_settings_or_the_platform_side_loads_no_ml_stack() -> None:
    script = (
        "import json, sys\n"
        "import inferforge.inference.settings, inferforge.components.inference_service, inferforge.stacks.config\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'deepspeed', 'transformers', 'numpy', 'safetensors', 'pulumi'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script.replace(", 'pulumi'", "")], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    # The server side needs neither Pulumi nor the platform to read its own settings.
    alone = subprocess.run([sys.executable, "-c", script.replace(
        ", inferforge.components.inference_service, inferforge.stacks.config", "")], cwd=REPO, capture_output=True,
        text=True, timeout=120)
    assert alone.returncode == 0, alone.stderr
    assert json.loads(alone.stdout) == []


def _serve(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", "--model-dir", "/m", *argv])


@pytest.mark.parametrize("field", FIELDS, ids=NAMES)
def test_every_setting_is_a_server_flag_with_the_declared_default(field: dataclasses.Field[Any]) -> None:
    assert getattr(_serve(), field.name) == field.default


@pytest.mark.parametrize("field", FIELDS, ids=NAMES)
def test_every_setting_is_a_component_argument_with_the_declared_default_and_limits(
        field: dataclasses.Field[Any]) -> None:
    serving = {f.name: f for f in dataclasses.fields(InferenceServiceArgs)}["serving"]
    assert serving.default_factory().__class__.__name__ == "ServingSettings"
    component = {f.name: f for f in dataclasses.fields(serving.default_factory().__class__)}[field.name]
    # The platform imports the declaration as inferforge.inference.settings, the server as inference.settings:
    # two copies of one module in this test process, so compare values, not class identity.
    assert component.default == field.default
    assert repr(limits_of(component)) == repr(limits_of(field))


@pytest.mark.parametrize("field", FIELDS, ids=NAMES)
def test_every_setting_is_a_stack_key_with_the_declared_default_and_limits(field: dataclasses.Field[Any]) -> None:
    config = InferenceConfig.model_fields[field.name]
    expected = defaults.STACK_MAX_MODEL_LEN if field.name == "max_model_len" else field.default
    assert config.default == expected
    limits = limits_of(field)
    metadata = {type(m).__name__: m for m in config.metadata}
    for bound in ("ge", "le", "gt"):
        value = getattr(limits, bound) if limits else None
        assert getattr(metadata.get(bound.capitalize()), bound, None) == value, bound


def test_engine_config_defaults_are_the_declared_ones() -> None:
    engine = {f.name: f.default for f in dataclasses.fields(EngineConfig)}
    shared = [f for f in FIELDS if f.name in engine]
    assert {f.name for f in shared} >= {"dtype", "max_batch_size", "max_waiting", "max_model_len", "kv_block_size",
                                        "gpu_memory_utilization", "enable_prefix_caching", "kv_cache_memory_gib"}
    for field in shared:
        assert engine[field.name] == field.default, field.name
    assert engine["max_num_batched_tokens"] == defaults.MAX_NUM_BATCHED_TOKENS


def test_every_choice_has_its_implementation() -> None:
    assert set(FORMATS) == set(settings.ToolCallParser)
    assert set(DTYPES) == set(settings.Dtype) - {settings.Dtype.AUTO}


NON_DEFAULT = ServingSettings(
    tp_size=2, dtype=settings.Dtype.FLOAT32, max_batch_size=8, max_waiting=9, max_model_len=1024,
    kv_cache_memory_gib=1.5, gpu_memory_utilization=0.8, kv_block_size=32, enable_prefix_caching=False,
    embeddings=settings.Embeddings.OFF, embeddings_pooling=settings.EmbeddingsPooling.MEAN,
    tool_call_parser=settings.ToolCallParser.MISTRAL, drain_timeout_s=7)


def test_the_argv_of_some_settings_parses_back_to_the_same_settings() -> None:
    for chosen in (NON_DEFAULT, ServingSettings()):
        assert settings.from_namespace(_serve(*settings.to_argv(chosen))) == chosen
    assert all(getattr(NON_DEFAULT, f.name) != f.default for f in FIELDS if f.name != "embeddings"), \
        "NON_DEFAULT must move every setting off its default (embeddings served needs tp 1)"


def test_the_server_passes_every_engine_setting_to_the_engine(tmp_path: Path) -> None:
    args = _serve(*settings.to_argv(NON_DEFAULT))
    config = _engine_config(args)
    for field in FIELDS:
        if hasattr(config, field.name):
            assert getattr(config, field.name) == getattr(NON_DEFAULT, field.name), field.name


def test_the_component_writes_every_setting_into_the_pod_command() -> None:
    """The pod runs what the plan shows, whatever defaults the image's CLI was built with."""
    from tests.platform.test_inference_service import manifests, prod_args, render_service, server_container

    chosen = {f.name: getattr(NON_DEFAULT, f.name) for f in FIELDS}
    command = server_container(manifests(render_service(prod_args(**chosen, autoscaling=None))))["command"]
    assert command[:4] == ["python", "-m", "inference", "serve"]
    parsed = build_parser().parse_args(command[3:])
    assert settings.from_namespace(parsed) == NON_DEFAULT
    assert parsed.port == SERVING_PORT == defaults.PORT
    # Defaults too are written out, not left to the image.
    default_command = server_container(manifests(render_service(prod_args(autoscaling=None))))["command"]
    assert all(settings.flag_of(f) in default_command for f in FIELDS if f.default is not None
               and not isinstance(f.default, bool))


def test_the_stack_section_hands_every_setting_to_the_component() -> None:
    section = InferenceConfig(**{f.name: getattr(NON_DEFAULT, f.name) for f in FIELDS})
    assert section.args() == {f.name: getattr(NON_DEFAULT, f.name) for f in FIELDS}


@pytest.mark.parametrize(("field", "value"), [("tp_size", 9), ("tp_size", 0), ("max_model_len", 1),
                                              ("gpu_memory_utilization", 0.0), ("gpu_memory_utilization", 1.01),
                                              ("kv_block_size", 1025), ("drain_timeout_s", -1)])
def test_one_bound_refused_on_every_surface(field: str, value: Any) -> None:
    flag = settings.flag_of(next(f for f in FIELDS if f.name == field))
    with pytest.raises(UsageError, match=flag):
        _serve(flag, str(value))
    key = "drainTimeoutSeconds" if field == "drain_timeout_s" else to_camel(field)
    with pytest.raises(ValidationError, match=key):
        InferenceConfig.model_validate({key: value})
    from tests.platform.test_inference_service import prod_args

    with pytest.raises(InferenceServiceConfigError, match=f"serving.{field}={value!r} is invalid"):
        prod_args(**{field: value})


# ---- a setting added to the declaration appears on every surface ------------------------------------------


@dataclass(kw_only=True)
class WithNewSetting(ServingSettings):
    """The declaration plus one setting, as a change adding one would make it."""

    max_num_seqs_prefill: int = settings.setting(4, ge=1, le=16)
    """Prompts started per step."""


def test_a_new_setting_becomes_a_flag_an_argv_entry_a_stack_key_and_a_checked_argument() -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    settings.add_arguments(parser, WithNewSetting)
    assert "--max-num-seqs-prefill" in parser.format_help() and "Prompts started per step" in parser.format_help()
    parsed = settings.from_namespace(parser.parse_args(["--max-num-seqs-prefill", "9"]), WithNewSetting)
    assert parsed.max_num_seqs_prefill == 9
    assert settings.to_argv(parsed, WithNewSetting)[-2:] == ["--max-num-seqs-prefill", "9"]
    with pytest.raises(argparse.ArgumentError, match="<= 16"):
        parser.parse_args(["--max-num-seqs-prefill", "17"])
    section = embed(WithNewSetting, tuple(f.name for f in settings_fields(WithNewSetting)), base=_Section)
    assert section.model_validate({"maxNumSeqsPrefill": 3}).args()["max_num_seqs_prefill"] == 3
    with pytest.raises(ValidationError, match="maxNumSeqsPrefill"):
        section.model_validate({"maxNumSeqsPrefill": 0})
    with pytest.raises(ArgsOutOfLimits, match="max_num_seqs_prefill=0"):
        check_limits(WithNewSetting(max_num_seqs_prefill=0))


def test_a_bad_stack_value_names_the_yaml_key() -> None:
    from inferforge.stacks.render import validate_stack

    with pytest.raises(ConfigError, match=r"inferforge:inference\.kvBlockSize"):
        validate_stack("dev", {"inference": {"kvBlockSize": 0}})
