"""One owner per contract: a stack config section embeds its component's Args instead of re-declaring them.

The Args dataclass declares each setting once (type, default, limits, description); the stack config section
takes those fields from it, pydantic checks them naming the YAML key, and the component checks the same
limits for callers that do not come through the stack config (Python libraries, other Pulumi languages).
"""

import dataclasses

import pytest
from inferforge.components import reference
from inferforge.components.aks import AksClusterArgs
from inferforge.components.egress import EgressFirewallArgs
from inferforge.components.frontdoor import FrontDoorArgs
from inferforge.components.inference_service import (
    InferenceServiceArgs,
    InferenceServiceConfigError,
    ServingSettings,
)
from inferforge.components.keyvault import KeyVault, KeyVaultArgs
from inferforge.components.model_store import ModelStoreArgs
from inferforge.components.observability import ObservabilityArgs
from inferforge.components.postgres import PostgresPgvectorArgs
from inferforge.components.redis import ManagedRedisArgs
from inferforge.components.registry import ContainerRegistryArgs
from inferforge.stacks.config import (
    AksConfig,
    ConfigError,
    FirewallConfig,
    FrontDoorConfig,
    KeyVaultConfig,
    ModelStoreConfig,
    ObservabilityConfig,
    PostgresConfig,
    RedisConfig,
    RegistryConfig,
)
from inferforge.stacks.render import validate_stack

EMBEDDED = [(KeyVaultConfig, KeyVaultArgs), (PostgresConfig, PostgresPgvectorArgs), (RedisConfig, ManagedRedisArgs),
            (FrontDoorConfig, FrontDoorArgs), (RegistryConfig, ContainerRegistryArgs), (AksConfig, AksClusterArgs),
            (ObservabilityConfig, ObservabilityArgs), (FirewallConfig, EgressFirewallArgs),
            (ModelStoreConfig, ModelStoreArgs)]
# Keys a section still declares itself although the Args have a field of that name, and why (all narrower).
STILL_DECLARED = {
    "AksConfig": {"system_zones": "zone names '1'-'3' only",
                  "system_os_disk_size_gb": "None = derived from the system VM size's temp disk",
                  "gpu_pools": "GpuPoolConfig, not yet GpuPoolArgs: config defaults min 0 / max 1 and disk checks"},
    "FirewallConfig": {"zones": "zone names '1'-'3' only"},
    "ModelStoreConfig": {"account_name": "optional here: None derives it from the stack's names"},
}


def problems(overrides: dict, stack: str = "dev") -> str:
    with pytest.raises(ConfigError) as caught:
        validate_stack(stack, overrides)
    return "\n".join(caught.value.problems)


def _docs(args: type) -> dict[str, str | None]:
    return {f.name: f.doc for f in reference.dataclass_fields(args)[0]}


@pytest.mark.parametrize(("section", "args"), EMBEDDED, ids=lambda x: x.__name__)
def test_the_section_takes_type_default_and_description_from_the_args(section, args):
    fields = {f.name: f for f in dataclasses.fields(args)}
    docs = _docs(args)
    assert section.__embedded__
    for name in section.__embedded__:
        config_field = section.model_fields[name]
        assert config_field.annotation == fields[name].type
        if fields[name].default_factory is dataclasses.MISSING:
            assert config_field.default == fields[name].default
        assert config_field.description == docs[name]


@pytest.mark.parametrize(("section", "args"), EMBEDDED, ids=lambda x: x.__name__)
def test_no_setting_is_declared_twice(section, args):
    redeclared = set(section.model_fields) - set(section.__embedded__)
    redeclared &= {f.name for f in dataclasses.fields(args)}
    assert redeclared == set(STILL_DECLARED.get(section.__name__, {}))


def test_key_vault_section_embeds_exactly_the_settings_a_stack_chooses():
    assert set(KeyVaultConfig.model_fields) == {"sku", "public_network_access", "soft_delete_retention_days"}


def test_a_limit_declared_on_the_args_is_checked_by_the_config_naming_the_yaml_key():
    text = problems({"keyVault": {"softDeleteRetentionDays": 3}})
    assert "inferforge:keyVault.softDeleteRetentionDays: Input should be greater than or equal to 7 (got 3)" in text


def test_a_choice_outside_the_args_enum_names_the_yaml_key_and_the_choices():
    text = problems({"keyVault": {"sku": "gold"}})
    assert "inferforge:keyVault.sku: Input should be 'standard' or 'premium' (got 'gold')" in text


def test_the_component_checks_the_same_limit_for_callers_outside_the_stack_config():
    args = KeyVaultArgs(resource_group_name="rg", location="westeurope", name_prefix="kv-x-dev", tenant_id="t",
                        private_endpoint_subnet_id="/s", private_dns_zone_id="/z", log_analytics_workspace_id="/w",
                        soft_delete_retention_days=3)
    expected = r"KeyVaultArgs.soft_delete_retention_days=3 is invalid: allowed: >= 7 and <= 90"
    with pytest.raises(ValueError, match=expected):
        KeyVault("kv", args)  # rejected before anything is registered: no engine needed


# The /dev/shm rule: one function owns it; the config (naming YAML keys) and the component both call it.
# Before, the config only required shmSizeGi < memoryGi while the component required room for every rank,
# so a config could pass `plan` validation and fail inside the program.

def _inference(memory_gi: int, shm_gi: int) -> dict:
    return {"inference": {"memoryGi": memory_gi, "shmSizeGi": shm_gi}}


def test_config_rejects_shm_that_leaves_the_ranks_no_memory_naming_the_yaml_keys():
    text = problems(_inference(memory_gi=160, shm_gi=159))  # dev: tpSize 1; passed the old config rule
    assert "inferforge:inference.shmSizeGi: 159 leaves 1 GiB of memoryGi 160 for 1 tensor-parallel rank(s)" in text
    assert "allowed: shmSizeGi <= memoryGi - 2 x tpSize = 158" in text


def test_config_and_component_agree_on_the_boundary():
    assert validate_stack("dev", _inference(memory_gi=160, shm_gi=158)).inference.shm_size_gi == 158
    fits = dict(model_name="m", image_registry="r.azurecr.io", image_repository="inferforge/inference",
                workload_identity_client_id="c", keyvault_url="https://kv", pls_name="pls", pls_subnet_name="s",
                pls_subnet_cidr="10.0.6.0/24", node_cidr="10.0.0.0/22", private_endpoint_subnet_cidr="10.0.4.0/24",
                gpu_node_labels={"inferforge.io/pool": "gpu"}, allow_image_tags=True, image_tag="t",
                memory_limit_gib=160, serving=ServingSettings(tp_size=1))
    InferenceServiceArgs(**fits, shm_size_gib=158).validate()
    with pytest.raises(InferenceServiceConfigError, match=r"shm_size_gib=159 is invalid: 159 leaves 1 GiB"):
        InferenceServiceArgs(**fits, shm_size_gib=159).validate()
