"""Bad stack config is rejected before any resource is registered, naming the key, value and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pulumi
import pytest
from inferforge.stacks.config import ConfigError
from inferforge.stacks.render import REPO_ROOT, ensure_main_thread_event_loop, validate_stack

from tests.stack_overrides import WITH_WORKLOADS


def problems(overrides: dict, stack: str = "dev") -> str:
    with pytest.raises(ConfigError) as caught:
        validate_stack(stack, overrides)
    return "\n".join(caught.value.problems)


def test_shipped_stacks_are_valid():
    assert validate_stack("dev").environment == "dev"
    assert validate_stack("prod").postgres.zone_redundant_ha is True
    assert validate_stack("test").environment == "test"


def test_test_baseline_has_prods_posture_on_smaller_skus():
    test, prod = validate_stack("test"), validate_stack("prod")
    # Posture: the same as prod.
    for posture in ("resource_locks",):
        assert getattr(test, posture) == getattr(prod, posture) is True
    assert test.aks.private_cluster and test.aks.system_zones == prod.aks.system_zones == ["1", "2", "3"]
    assert (test.postgres.zone_redundant_ha, test.postgres.geo_redundant_backup, test.postgres.password_auth) == (
        True, True, False)
    assert test.redis.high_availability and test.key_vault.sku == "premium"
    assert test.egress.firewall.threat_intel_mode == "Deny" and test.front_door.waf_mode == "Prevention"
    assert test.model_store.sku_name == prod.model_store.sku_name == "Premium_ZRS"
    # Size: smaller than prod.
    assert test.postgres.sku_name == "Standard_D2ds_v5" != prod.postgres.sku_name
    assert test.redis.sku_name == "Balanced_B1" and test.aks.system_vm_size == "Standard_D4ds_v5"
    assert test.aks.gpu_pools[0].max_count < prod.aks.gpu_pools[0].max_count


def test_an_unknown_environment_names_the_three_allowed():
    text = problems({"environment": "staging"})
    assert "inferforge:environment" in text and "'dev', 'test' or 'prod'" in text


def test_unknown_top_level_key_is_named_with_the_allowed_keys():
    text = problems({"inferforge:redisCache": {"sku": "C1"}})
    assert "inferforge:redisCache: unknown key" in text
    assert "allowed keys here:" in text and "redis" in text and "frontDoor" in text


def test_unknown_nested_key_is_named_with_its_path():
    text = problems({"aks": {"gpuPools": [{"name": "gpua100", "vmSize": "Standard_NC24ads_A100_v4",
                                           "minCount": 0, "maxCount": 2, "spot": True}]}})
    assert "inferforge:aks.gpuPools[0].spot: unknown key" in text
    assert "vmSize" in text and "minCount" in text


def test_gpu_pool_max_below_min_is_rejected():
    text = problems({"aks": {"gpuPools": [{"name": "gpua100", "vmSize": "Standard_NC24ads_A100_v4",
                                           "minCount": 3, "maxCount": 1}]}})
    assert "inferforge:aks.gpuPools[0].maxCount: 1 is less than minCount 3; allowed: maxCount >= minCount" \
        in text


def test_vm_size_that_is_not_a_gpu_size_is_rejected_with_the_known_sizes():
    text = problems({"aks": {"gpuPools": [{"name": "gpua100", "vmSize": "Standard_D4s_v5",
                                           "minCount": 0, "maxCount": 1}]}})
    assert "inferforge:aks.gpuPools[0].vmSize: 'Standard_D4s_v5' is not a known GPU VM size" in text
    assert "Standard_NC24ads_A100_v4" in text and "Standard_ND96isr_H100_v5" in text


def test_subnet_outside_the_vnet_is_rejected():
    text = problems({"network": {"aksSubnet": "10.99.0.0/22"}})
    assert "inferforge:network.aksSubnet: 10.99.0.0/22 lies outside addressSpace 10.20.0.0/16" in text


def test_overlapping_subnets_are_rejected():
    text = problems({"network": {"privateEndpointSubnet": "10.20.5.0/24"}})
    assert "inferforge:network.privateEndpointSubnet: 10.20.5.0/24 overlaps postgresSubnet 10.20.5.0/24" in text
    assert "allowed: disjoint subnets" in text


def test_malformed_cidr_is_rejected():
    text = problems({"network": {"postgresSubnet": "10.20.5.7/24"}})
    assert "inferforge:network.postgresSubnet" in text and "host bits" in text


def test_tensor_parallel_size_beyond_the_vm_gpus_is_rejected():
    text = problems({"inference": {"tpSize": 2}})
    assert ("inferforge:inference.tpSize: 2 does not fit Standard_NC24ads_A100_v4 (1 GPUs per node, "
            "pool 'gpua100'); allowed: 1") in text


def test_tensor_parallel_size_must_divide_the_gpu_count():
    overrides = {"aks": {"gpuPools": [{"name": "gpund", "vmSize": "Standard_ND96isr_H100_v5", "minCount": 0,
                                       "maxCount": 1}]}, "inference": {"gpuPool": "gpund", "tpSize": 3}}
    text = problems(overrides)
    assert "inferforge:inference.tpSize: 3 does not fit Standard_ND96isr_H100_v5" in text
    assert "allowed: 1, 2, 4, 8" in text


def test_workload_name_that_breaks_key_vault_length_is_rejected():
    text = problems({"workload": "inferforgeplat"})
    assert "inferforge:workload: 'inferforgeplat' gives an invalid name: Key Vault name" in text
    assert "allowed: 3-24 characters" in text


def test_workload_name_with_bad_charset_is_rejected():
    text = problems({"workload": "Infer_Forge"})
    assert "inferforge:workload: String should match pattern" in text and "'Infer_Forge'" in text


def test_gpu_pool_name_breaking_aks_rules_is_rejected():
    text = problems({"aks": {"gpuPools": [{"name": "GPU-pool-number-1", "vmSize": "Standard_NC24ads_A100_v4",
                                           "minCount": 0, "maxCount": 1}]}, "inference": {"gpuPool": "x"}})
    assert "inferforge:aks.gpuPools[0].name: AKS Linux node pool name 'GPU-pool-number-1' is 17 characters; " \
           "allowed: 1-12 characters" in text


def test_inference_pool_must_exist():
    text = problems({"inference": {"gpuPool": "gpuh100"}})
    assert "inferforge:inference.gpuPool: 'gpuh100' is not a pool in aks.gpuPools; allowed: gpua100" in text


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_stack_requires_image_digests_once_workloads_are_deployed(stack):
    text = problems({**WITH_WORKLOADS, "inference": {**WITH_WORKLOADS["inference"],
                                                      "image": {"digest": None, "tag": "latest"}}}, stack=stack)
    assert "inferforge:inference.image.digest: is not set; allowed: only images pinned by digest" in text
    assert f"push or import inferforge/inference:latest into registry 'crinferforge{stack}'" in text
    assert "pgvectorJob" not in text  # the others are pinned


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_shipped_first_phase_needs_no_digests_and_deploys_no_workloads(stack):
    cfg = validate_stack(stack)
    assert cfg.deploy_workloads is False and cfg.inference.image.digest is None


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_workloads_without_digests_name_every_unpinned_image(stack):
    text = problems({"deployWorkloads": True}, stack=stack)
    for key in ("inference.image", "inference.pgvectorJob.azureCliImage", "inference.pgvectorJob.postgresClientImage",
                "aks.nvidiaDevicePluginImage"):
        assert f"inferforge:{key}.digest: is not set; allowed: only images pinned by digest" in text


@pytest.mark.parametrize("digest", ["sha256:" + "0" * 64, "sha256:" + "f" * 64])
@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_placeholder_digest_fails_naming_the_key_and_what_to_put_there(digest, stack):
    overrides = {**WITH_WORKLOADS}
    overrides["inference"] = {**overrides.get("inference", {}),
                              "image": {"repository": "inferforge/inference", "tag": "0.1.0", "digest": digest}}
    text = problems(overrides, stack=stack)
    assert f"inferforge:inference.image.digest: {digest[:15]}... is a placeholder, not an image" in text
    assert "az acr repository show -n <registry.name> --image inferforge/inference:0.1.0 --query digest -o tsv" in text


def test_placeholder_digest_of_a_mirrored_image_is_named_too():
    text = problems({"inference": {"pgvectorJob": {"postgresClientImage": {
        "repository": "mirror/postgres", "tag": "16-alpine", "digest": "sha256:" + "0" * 64}}}})
    assert "inferforge:inference.pgvectorJob.postgresClientImage.digest: sha256:00000000... is a placeholder" in text


def test_a_real_looking_digest_is_accepted():
    digest = WITH_WORKLOADS["inference"]["image"]["digest"]
    assert validate_stack("prod", WITH_WORKLOADS).inference.image.digest == digest


def test_image_registry_key_is_gone_images_come_from_the_platform_registry():
    text = problems({"inference": {"image": {"registry": "docker.io"}}})
    assert "inferforge:inference.image.registry: unknown key; allowed keys here: repository, digest, tag" in text


def test_registry_name_must_be_a_valid_acr_name():
    text = problems({"registry": {"name": "cr-inferforge"}})
    assert "inferforge:registry.name: String should match pattern '^[a-zA-Z0-9]{5,50}$'" in text


def test_autoscaling_is_refused_until_the_platform_provides_keda_and_prometheus():
    text = problems({"inference": {"autoscaling": {"enabled": True,
                                                   "prometheusServerAddress": "https://amw.prometheus.monitor.azure.com"}}})
    assert "inferforge:inference.autoscaling.enabled: is true, but autoscaling needs what this platform does not " \
        "provision yet: the AKS KEDA add-on" in text
    assert "allowed: false" in text


def test_public_aks_api_needs_authorized_ranges():
    text = problems({"aks": {"authorizedIpRanges": []}})
    assert "inferforge:aks.privateCluster: is false but authorizedIpRanges is empty" in text


def test_wrong_type_names_the_value():
    text = problems({"inference": {"replicas": "many"}})
    assert "inferforge:inference.replicas: Input should be a valid integer" in text and "'many'" in text


def test_every_problem_is_reported_at_once():
    text = problems({"network": {"aksSubnet": "10.99.0.0/22"}, "redis": {"skuName": "Premium_P1"}})
    assert "network.aksSubnet" in text and "redis.skuName" in text


def test_pulumi_program_fails_with_run_error_before_registering_anything():
    """Under the engine, bad config is a RunError (reported without a traceback) and nothing is created."""
    from inferforge.stacks import program
    from inferforge.stacks.mocks import AzureMocks, RecordingMonitor
    from inferforge.stacks.render import engine_config, stack_config
    from pulumi.runtime import mocks as pulumi_mocks
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    config = engine_config(stack_config("dev", {"aks": {"gpuPools": []}}))
    monitor = RecordingMonitor(AzureMocks())
    pulumi.runtime.set_all_config(config)
    ensure_main_thread_event_loop()
    pulumi_mocks.set_mocks(monitor.mocks, project="inferforge", stack="dev", preview=True, monitor=monitor)
    try:
        with pytest.raises(pulumi.RunError) as caught:
            _sync_await(run_pulumi_func(program.main))
    finally:
        pulumi.runtime.set_all_config({})
    assert "inferforge:aks.gpuPools: List should have at least 1 item" in str(caught.value)
    assert monitor.registrations == []


def _plan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stacks", "plan", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)


def test_plan_rejects_bad_config_with_exit_2_and_no_traceback(tmp_path: Path):
    stack_yaml = (REPO_ROOT / "Pulumi.dev.yaml").read_text().replace("maxCount: 2", "maxCount: -1")
    (tmp_path / "Pulumi.broken.yaml").write_text(stack_yaml)
    result = _plan("--stack", "broken", "--cwd", str(tmp_path))
    assert result.returncode == 2
    assert "inferforge:aks.gpuPools[0].maxCount: Input should be greater than or equal to 1 (got -1)" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_plan_rejects_unknown_stack_naming_the_allowed_ones():
    result = _plan("--stack", "staging")
    assert result.returncode == 2
    assert "unknown stack 'staging'; allowed: dev, prod, test" in result.stderr
    assert "Traceback" not in result.stderr


def test_embedding_dimensions_beyond_what_pgvector_indexes_are_rejected():
    text = problems({"inference": {"embeddingDimensions": 3072}})
    assert "inferforge:inference.embeddingDimensions" in text and "2000" in text
    assert validate_stack("dev", {"inference": {"embeddingDimensions": 1024}}).inference.embedding_dimensions == 1024


def test_served_embeddings_need_tensor_parallel_size_one():
    text = problems({**WITH_WORKLOADS, "inference": {**WITH_WORKLOADS["inference"], "embeddings": "served"}},
                    stack="prod")
    assert "inferforge:inference.embeddings: served with tpSize 2" in text
    assert "allowed: tpSize 1, or embeddings off" in text


@pytest.mark.parametrize("key", ["inferfroge:resourceLocks", "inferforg:deployWorkloads", "Inferforge:owner"])
def test_a_misspelt_namespace_is_named_not_silently_ignored(key: str) -> None:
    from inferforge.stacks.config import parse_stack_config

    raw = {"inferforge:environment": "dev", "inferforge:location": "westeurope", "inferforge:owner": "o",
           "inferforge:costCenter": "c", key: "false"}
    with pytest.raises(ConfigError) as caught:
        parse_stack_config(raw)
    message = str(caught.value)
    assert key in message and "a typo?" in message and f"inferforge:{key.split(':')[1]}" in message


def test_other_providers_namespaces_stay_theirs() -> None:
    import yaml
    from inferforge.stacks.config import parse_stack_config

    raw = yaml.safe_load((REPO_ROOT / "Pulumi.dev.yaml").read_text())["config"]
    cfg = parse_stack_config({**raw, "azure-native:location": "westeurope", "kubernetes:context": "x",
                              "random:version": "4", "pulumi:tags": "{}"})
    assert cfg.location == "westeurope"
