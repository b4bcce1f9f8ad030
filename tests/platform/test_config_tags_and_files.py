"""Config that would weaken posture silently, or that Azure rejects at apply time, fails validation up front.

Tag rules: https://learn.microsoft.com/azure/azure-resource-manager/management/tag-resources#limitations
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from inferforge.stacks.config import ConfigError
from inferforge.stacks.render import REPO_ROOT, StackFileError, load_stack_yaml, validate_stack


def problems(overrides: dict, stack: str = "dev") -> str:
    with pytest.raises(ConfigError) as caught:
        validate_stack(stack, overrides)
    return "\n".join(caught.value.problems)


@pytest.mark.parametrize("name", ["environment", "Environment", "OWNER", "cost-center", "managed-by", "workload"])
def test_extra_tags_cannot_override_a_standard_tag(name: str):
    text = problems({"extraTags": {name: "dev"}}, stack="prod")
    assert f"inferforge:extraTags.{name}: overrides the standard tag" in text
    assert "allowed: a tag name other than environment, owner, cost-center, managed-by, workload" in text


@pytest.mark.parametrize("name", ["team/owner", "a<b", "50%", "r&d", "back\\slash", "why?", "cost#1", "ns:key",
                                  "two words", "f(x)", "1st", "microsoft-owned", "Azure-thing", "windowsfoo"])
def test_tag_names_azure_rejects_are_named(name: str):
    text = problems({"extraTags": {name: "x"}})
    assert f"inferforge:extraTags.{name}" in text and "allowed:" in text


def test_valid_extra_tags_pass_and_reach_every_resource_beside_the_standard_ones():
    cfg = validate_stack("prod", {"extraTags": {"team": "platform", "data-class": "internal"}})
    assert cfg.extra_tags == {"team": "platform", "data-class": "internal"}


def test_tag_name_and_value_lengths_are_bounded():
    text = problems({"extraTags": {"n" * 513: "x", "long": "v" * 257}})
    assert "is 513 characters; allowed: 1-512" in text
    assert "inferforge:extraTags.long: value is 257 characters; allowed: at most 256" in text


def test_too_many_tags_are_rejected_counting_the_standard_ones():
    text = problems({"extraTags": {f"t{i}": "x" for i in range(11)}})
    assert "inferforge:extraTags: 11 tags plus 5 standard tags make 16; allowed: at most 10 extra tags" in text


def test_a_huge_value_is_not_echoed_whole():
    text = problems({"owner": "x" * 100_000})
    assert "inferforge:owner" in text
    assert len(text) < 600
    assert "100000 characters" in text


def test_a_huge_value_in_a_custom_check_is_not_echoed_whole():
    text = problems({"network": {"aksSubnet": "1" * 100_000}})
    assert "inferforge:network.aksSubnet" in text and len(text) < 800


def test_a_stack_file_with_a_non_utf8_byte_gets_a_short_error(tmp_path: Path):
    (tmp_path / "Pulumi.bad.yaml").write_bytes(b"config:\n  inferforge:owner: caf\xe9\n")
    with pytest.raises(StackFileError) as caught:
        load_stack_yaml("bad", tmp_path)
    message = str(caught.value)
    assert "Pulumi.bad.yaml is not UTF-8" in message and "line 2" in message and "0xe9" in message


def test_plan_reports_a_non_utf8_stack_file_with_exit_2_and_no_traceback(tmp_path: Path):
    (tmp_path / "Pulumi.bad.yaml").write_bytes(b"config:\n  inferforge:owner: caf\xe9\n")
    result = subprocess.run([sys.executable, "-m", "stacks", "plan", "--stack", "bad", "--cwd", str(tmp_path)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "is not UTF-8" in result.stderr and "Traceback" not in result.stderr + result.stdout


def test_a_stack_file_that_is_not_a_mapping_gets_a_short_error(tmp_path: Path):
    (tmp_path / "Pulumi.list.yaml").write_text("- just\n- a list\n")
    with pytest.raises(StackFileError) as caught:
        load_stack_yaml("list", tmp_path)
    assert "Pulumi.list.yaml" in str(caught.value) and "mapping" in str(caught.value)


def test_the_component_library_refuses_an_override_of_a_standard_tag_too():
    from inferforge.components.common import standard_tags

    with pytest.raises(ValueError, match="overrides the standard tag 'environment'"):
        standard_tags(environment="prod", owner="o", cost_center="c", extra={"Environment": "dev"})
    assert standard_tags(environment="prod", owner="o", cost_center="c", extra={"team": "ml"})["environment"] == "prod"


POOL = {"name": "gpua100", "vmSize": "Standard_NC24ads_A100_v4", "minCount": 0, "maxCount": 2}


@pytest.mark.parametrize(("labels", "fragment"), [
    ({"team/owner/x": "a"}, "label key 'team/owner/x'"),
    ({"-bad": "a"}, "label key '-bad'"),
    ({"k" * 64: "a"}, "label key"),
    ({"example.com/ok": "v" * 64}, "label value"),
    ({"tier": "has space"}, "label value 'has space'"),
    ({"kubernetes.azure.com/mode": "user"}, "reserved"),
])
def test_gpu_pool_labels_kubernetes_rejects_are_named(labels: dict, fragment: str):
    text = problems({"aks": {"gpuPools": [{**POOL, "labels": labels}]}})
    assert "inferforge:aks.gpuPools[0].labels" in text and fragment in text and "allowed:" in text


def test_valid_gpu_pool_labels_pass():
    cfg = validate_stack("dev", {"aks": {"gpuPools": [{**POOL, "labels": {"example.com/tier": "a100", "team": "ml"}}]}})
    assert cfg.aks.gpu_pools[0].labels["team"] == "ml"


@pytest.mark.parametrize(("source", "fragment"), [
    ({"subPath": "../secrets"}, "inferforge:inference.modelSource.subPath"),
    ({"subPath": "/etc"}, "inferforge:inference.modelSource.subPath"),
    ({"storageClass": "Premium_LRS"}, "inferforge:inference.modelSource.storageClass"),
    ({"existingClaim": "my_claim"}, "inferforge:inference.modelSource.existingClaim"),
])
def test_model_source_names_kubernetes_rejects_are_named(source: dict, fragment: str):
    text = problems({"inference": {"modelSource": source}})
    assert fragment in text and "allowed:" in text


def test_a_huge_kubernetes_name_is_not_echoed_whole():
    text = problems({"inference": {"modelSource": {"storageClass": "a" * 100_000}}})
    assert "is 100000 characters; allowed: 1-253 characters" in text and len(text) < 400
