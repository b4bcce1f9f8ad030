"""The offline evaluator: config reconciliation as the engine does it, SDK-faithful arguments, reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from inferforge.policies.offline import (
    PolicyConfigError,
    Violation,
    evaluate,
    format_markdown,
    format_text,
    has_mandatory,
    load_pack_config,
)
from inferforge.policies.pack import ALL_POLICIES
from inferforge.stacks.render import RenderedResource
from pulumi_policy import EnforcementLevel, ResourceValidationPolicy, Severity
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE

from .conftest import CONFIG_DIR

VAULT = "azure-native:keyvault:Vault"


def vault(**properties: Any) -> RenderedResource:
    base = {
        "enableRbacAuthorization": True,
        "enablePurgeProtection": True,
        "publicNetworkAccess": "disabled",
        "networkAcls": {"defaultAction": "Deny"},
    }
    return RenderedResource(
        type=VAULT,
        name="kv",
        urn=f"urn:pulumi:test::inferforge::{VAULT}::kv",
        parent_urn=None,
        inputs={"properties": {**base, **properties}, "tags": {}},
        custom=True,
        id="/subscriptions/0/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv",
    )


def write(tmp_path: Path, config: Any) -> Path:
    path = tmp_path / "pack.json"
    path.write_text(json.dumps(config) if not isinstance(config, str) else config)
    return path


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_shipped_configs_are_valid(stack: str) -> None:
    settings = load_pack_config(CONFIG_DIR / f"{stack}.json")
    assert set(settings) == {p.name for p in ALL_POLICIES}


# Dev differs from prod in size and redundancy, not in posture: only these rules are off in dev.
DEV_REDUNDANCY_RULES = {"postgres-zone-redundant-ha", "postgres-geo-redundant-backup", "redis-high-availability",
                        "aks-system-pool-zones"}


def test_prod_makes_every_policy_mandatory_and_dev_differs_only_in_redundancy_cost_cap_and_signatures() -> None:
    prod = load_pack_config(CONFIG_DIR / "prod.json")
    dev = load_pack_config(CONFIG_DIR / "dev.json")

    assert {s.enforcement_level for s in prod.values()} == {EnforcementLevel.MANDATORY}
    relaxed = {name for name, s in dev.items() if s.enforcement_level != EnforcementLevel.MANDATORY}
    advisory = {"stack-monthly-cost-cap", "aks-image-signature-enforced"}
    assert relaxed == DEV_REDUNDANCY_RULES | advisory
    assert {dev[name].enforcement_level for name in DEV_REDUNDANCY_RULES} == {EnforcementLevel.DISABLED}
    # Dev's estimate is reported against its cap (issue 23), and dev may run images built on a laptop, unsigned
    # (issue 24): both reported, never blocking.
    assert {dev[name].enforcement_level for name in advisory} == {EnforcementLevel.ADVISORY}


def test_schema_defaults_fill_in_and_given_values_override(tmp_path) -> None:
    path = write(tmp_path, {"all": "advisory", "aks-gpu-pool-max-nodes": {"maxNodesPerPool": 2}})

    settings = load_pack_config(path)

    assert settings["aks-gpu-pool-max-nodes"].properties == {"maxNodesPerPool": 2}
    assert settings["aks-gpu-stack-max-nodes"].properties == {"maxNodesPerStack": 8}
    assert settings["azure-required-tags"].properties["requiredTags"] == [
        "owner",
        "cost-center",
        "environment",
    ]
    assert settings["keyvault-rbac-authorization"].enforcement_level == EnforcementLevel.ADVISORY


def test_without_a_policy_entry_the_pack_default_is_mandatory(tmp_path) -> None:
    settings = load_pack_config(write(tmp_path, {}))
    assert {s.enforcement_level for s in settings.values()} == {EnforcementLevel.MANDATORY}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"aks-gpu-pool-max-nodes": {"maxNodesPerPool": "four"}}, '"aks-gpu-pool-max-nodes.maxNodesPerPool"'),
        ({"aks-gpu-pool-max-nodes": {"maxNodesPerPool": -1}}, "minimum of 0"),
        ({"azure-minimum-tls-version": {"minimumVersion": "1.0"}}, "'1.0' is not one of ['1.2', '1.3']"),
        (
            {"aks-gpu-pool-max-nodes": {"maxNodes": 3}},
            "unknown config key(s) maxNodes; allowed: maxNodesPerPool",
        ),
        ({"keyvault-purge-protection": {"strict": True}}, "allowed: none (only enforcementLevel)"),
        ({"keyvault-purge-protecton": "mandatory"}, "unknown policy name(s) keyvault-purge-protecton"),
        ({"keyvault-purge-protection": "blocking"}, "'blocking' is not an enforcement level"),
        ({"all": "strict"}, "\"all\": 'strict' is not an enforcement level"),
        ({"keyvault-purge-protection": 3}, "must be an enforcement level string or an object"),
        ("{not json", "not valid JSON"),
        ([], "the top level must be an object"),
    ],
)
def test_bad_config_is_rejected_naming_the_key(tmp_path, config: Any, expected: str) -> None:
    with pytest.raises(PolicyConfigError) as error:
        load_pack_config(write(tmp_path, config))
    assert expected in str(error.value)
    assert str(tmp_path / "pack.json") in str(error.value)


def test_missing_config_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(PolicyConfigError, match="cannot read policy pack config"):
        load_pack_config(tmp_path / "absent.json")


def test_levels_from_config_reach_the_violations(tmp_path) -> None:
    public = vault(publicNetworkAccess="enabled", enablePurgeProtection=False)
    path = write(
        tmp_path,
        {
            "all": "advisory",
            "keyvault-public-network-disabled": "mandatory",
            "keyvault-purge-protection": "disabled",
        },
    )

    violations = evaluate([public], path, "test")

    by_policy = {v.policy_name: v.enforcement_level for v in violations}
    assert by_policy["keyvault-public-network-disabled"] == "mandatory"
    assert by_policy["keyvault-private-endpoint"] == "advisory"  # from "all"
    assert "keyvault-purge-protection" not in by_policy  # disabled
    assert has_mandatory(violations)
    assert not has_mandatory([v for v in violations if v.policy_name != "keyvault-public-network-disabled"])


def test_violation_carries_severity_remediation_and_resource(tmp_path) -> None:
    violations = evaluate(
        [vault(enableRbacAuthorization=False)], write(tmp_path, {"all": "mandatory"}), "test"
    )

    [v] = [v for v in violations if v.policy_name == "keyvault-rbac-authorization"]
    assert (v.severity, v.resource_type, v.resource_name) == ("high", VAULT, "kv")
    assert v.resource_urn.endswith("::kv")
    assert "enableRbacAuthorization" in v.message and "false" in v.message.lower()
    assert "enableRbacAuthorization=true" in v.remediation


def test_policies_see_values_as_the_analyzer_server_delivers_them(tmp_path) -> None:
    seen: dict[str, Any] = {}

    def spy(args, report) -> None:
        seen["count"] = args.props["count"]
        seen["config"] = args.get_config()["limit"]
        seen["nested_is_dict"] = isinstance(args.props["nested"], dict)

    from pulumi_policy import PolicyConfigSchema

    probe = ResourceValidationPolicy(
        name="probe",
        description="records what it sees",
        validate=spy,
        severity=Severity.LOW,
        config_schema=PolicyConfigSchema(properties={"limit": {"type": "integer", "default": 3}}),
    )
    resource = RenderedResource("test:index:Thing", "t", "urn:t", None, {"count": 2, "nested": {"a": 1}}, True, "t")

    evaluate([resource], write(tmp_path, {}), "test", policies=[probe])

    # Through protobuf, integers arrive as floats and mappings behind read-only proxies.
    assert seen == {"count": 2.0, "config": 3.0, "nested_is_dict": False}
    assert isinstance(seen["count"], float)


def test_unknown_values_make_an_advisory_note_not_a_crash(tmp_path) -> None:
    unknown = vault(publicNetworkAccess=UNKNOWN_STRING_VALUE)

    violations = evaluate([unknown], write(tmp_path, {"all": "mandatory"}), "test")

    [note] = [v for v in violations if v.policy_name == "keyvault-public-network-disabled"]
    assert note.enforcement_level == "advisory"
    assert "can't be known during preview" in note.message


def _sample() -> list[Violation]:
    return [
        Violation(
            "keyvault-public-network-disabled",
            "mandatory",
            "critical",
            "urn:kv",
            VAULT,
            "kv",
            "properties.publicNetworkAccess is 'enabled'",
            "Set it to disabled | private",
        ),
        Violation(
            "azure-required-tags", "advisory", "low", "urn:kv", VAULT, "kv", "missing tags: owner", "Tag it"
        ),
        Violation(
            "aks-gpu-stack-max-nodes", "mandatory", "medium", None, None, None, "too many GPUs", "Shrink"
        ),
    ]


def test_text_report_groups_by_enforcement_level_mandatory_first() -> None:
    text = format_text(_sample(), "prod")

    assert text.index("MANDATORY (2)") < text.index("ADVISORY (1)")
    assert "[critical] keyvault-public-network-disabled: azure-native:keyvault:Vault 'kv'" in text
    assert "fix: Set it to disabled" in text
    assert "aks-gpu-stack-max-nodes: stack-wide" in text


def test_markdown_report_is_a_table_per_level_with_escaped_cells() -> None:
    markdown = format_markdown(_sample(), "prod")

    assert markdown.startswith("### Policy pack `inferforge` on stack `prod`: ❌ blocked")
    assert "#### Mandatory (2)" in markdown and "#### Advisory (1)" in markdown
    assert "| critical | `keyvault-public-network-disabled` |" in markdown
    assert "disabled \\| private" in markdown


def test_reports_say_so_when_there_is_nothing_to_report() -> None:
    assert "no violations" in format_text([], "dev")
    assert "✅ passed" in format_markdown([], "dev")
    assert "✅ passed" in format_markdown([_sample()[1]], "dev")
