"""PgvectorExtension under mocks: a schema-valid, idempotent, password-free in-cluster Job."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pulumi
import pytest
from inferforge.components.pgvector_extension import (
    PgvectorExtension,
    PgvectorExtensionArgs,
    PgvectorExtensionConfigError,
)
from inferforge.policies.offline import config_path_for, evaluate

from tests.platform.test_inference_service import CLUSTER_VERSION, manifests, render

# Prod pulls only from the platform's ACR (k8s-allowed-registry): upstream images are `az acr import`ed.
CLI_IMAGE = "crinferforgeprod.azurecr.io/mirror/azure-cli@sha256:" + "1" * 64
PSQL_IMAGE = "crinferforgeprod.azurecr.io/mirror/postgres@sha256:" + "2" * 64


def job_args(**overrides: Any) -> PgvectorExtensionArgs:
    values: dict[str, Any] = dict(
        namespace="inference",
        host="psql-inferforge-prod.postgres.database.azure.com",
        database="inferforge",
        entra_principal_name="id-inferforge-prod-pgadmin",
        client_id="00000000-0000-0000-0000-000000000002",
        tenant_id="00000000-0000-0000-0000-0000000000aa",
        azure_cli_image=CLI_IMAGE,
        postgres_client_image=PSQL_IMAGE,
        postgres_subnet_cidr="10.20.5.0/24",
    )
    values.update(overrides)
    return PgvectorExtensionArgs(**values)


def render_resources(args: PgvectorExtensionArgs) -> list[Any]:
    return render(lambda provider: PgvectorExtension("pgvector", args, pulumi.ResourceOptions(provider=provider)))


def render_job(args: PgvectorExtensionArgs) -> dict[str, dict[str, Any]]:
    return manifests(render_resources(args))


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    return render_job(job_args())


def pod_of(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return objects["Job"]["spec"]["template"]


def test_every_rendered_object_validates_against_the_cluster_openapi_schema(
        objects: dict[str, dict[str, Any]]) -> None:
    assert set(objects) == {"ServiceAccount", "NetworkPolicy", "Job"}
    for manifest in objects.values():
        kubernetes_validate.validate(manifest, CLUSTER_VERSION, strict=True)


def test_job_creates_the_extension_idempotently_and_fails_on_sql_errors(objects: dict[str, dict[str, Any]]) -> None:
    (psql,) = pod_of(objects)["spec"]["containers"]
    script = psql["command"][-1]
    assert psql["command"][:2] == ["/bin/sh", "-ec"]
    assert "CREATE EXTENSION IF NOT EXISTS vector;" in script
    assert "ON_ERROR_STOP=1" in script
    env = {e["name"]: e["value"] for e in psql["env"]}
    assert env["PGHOST"] == "psql-inferforge-prod.postgres.database.azure.com"
    assert env["PGDATABASE"] == "inferforge"
    assert env["PGUSER"] == "id-inferforge-prod-pgadmin"
    assert env["PGSSLMODE"] == "require"


def test_token_comes_from_workload_identity_not_a_password(objects: dict[str, dict[str, Any]]) -> None:
    template = pod_of(objects)
    (get_token,) = template["spec"]["initContainers"]
    assert get_token["image"] == CLI_IMAGE
    script = get_token["command"][-1]
    assert "--federated-token" in script and "$AZURE_FEDERATED_TOKEN_FILE" in script
    assert "--resource-type oss-rdbms" in script
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    # The psql container needs the database token, not the federated identity token.
    assert template["metadata"]["annotations"] == {"azure.workload.identity/skip-containers": "psql"}
    assert objects["ServiceAccount"]["metadata"]["annotations"] == {
        "azure.workload.identity/client-id": "00000000-0000-0000-0000-000000000002",
        "azure.workload.identity/tenant-id": "00000000-0000-0000-0000-0000000000aa",
    }
    token_volume = next(v for v in template["spec"]["volumes"] if v["name"] == "pgtoken")
    assert token_volume["emptyDir"]["medium"] == "Memory"
    assert not any("PGPASSWORD" == e["name"] for c in template["spec"]["containers"] for e in c["env"])
    assert job_args().federated_subject == "system:serviceaccount:inference:pgvector-init"


def test_job_is_bounded_and_cleaned_up(objects: dict[str, dict[str, Any]]) -> None:
    spec = objects["Job"]["spec"]
    assert spec["backoffLimit"] == 4
    assert spec["activeDeadlineSeconds"] == 600
    assert spec["ttlSecondsAfterFinished"] == 86400
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert "name" not in objects["Job"]["metadata"]  # auto-named: a changed spec re-runs as a new Job


def test_containers_follow_the_restricted_security_rules(objects: dict[str, dict[str, Any]]) -> None:
    pod = pod_of(objects)["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in pod["initContainers"] + pod["containers"]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True and context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["resources"]["limits"]["memory"]


def test_network_policy_allows_only_dns_postgres_and_entra(objects: dict[str, dict[str, Any]]) -> None:
    spec = objects["NetworkPolicy"]["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_of(objects)["metadata"]["labels"].items()
    assert spec["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in spec
    dns, postgres, entra = spec["egress"]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert postgres == {"to": [{"ipBlock": {"cidr": "10.20.5.0/24"}}], "ports": [{"protocol": "TCP", "port": 5432}]}
    # Issue 15: 443 only to Entra ID's published ranges, never 0.0.0.0/0 (so never IMDS either).
    assert [peer["ipBlock"]["cidr"] for peer in entra["to"]] == ["20.190.128.0/18", "40.126.0.0/18"]
    assert entra["ports"] == [{"protocol": "TCP", "port": 443}]


def test_job_tolerates_the_system_pool_taint_by_default(objects: dict[str, dict[str, Any]]) -> None:
    assert pod_of(objects)["spec"]["tolerations"] == [
        {"key": "CriticalAddonsOnly", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]
    assert "tolerations" not in pod_of(render_job(job_args(tolerations=())))["spec"]


def test_every_child_uses_the_provider_passed_in_opts() -> None:
    mocked = render(lambda provider: PgvectorExtension("pgvector", job_args(),
                                                       pulumi.ResourceOptions(provider=provider)))
    children = [r for r in mocked if r.type.startswith("kubernetes:")]
    assert children and all("pulumi:providers:kubernetes::aks::" in (r.provider or "") for r in children)
    with pytest.raises(PgvectorExtensionConfigError, match="explicit pulumi_kubernetes.Provider"):
        render(lambda _provider: PgvectorExtension("pgvector", job_args()))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"azure_cli_image": "mcr.microsoft.com/azure-cli:latest"},
     r"azure_cli_image='mcr.microsoft.com/azure-cli:latest' is invalid: must be pinned by digest"),
    ({"postgres_client_image": "postgres:17", "allow_image_tags": True, "azure_cli_image": "Bad Image"},
     r"azure_cli_image='Bad Image' is invalid"),
    ({"ssl_mode": "disable"}, r"ssl_mode='disable' is invalid: must be 'require' or 'verify-full'"),
    ({"postgres_subnet_cidr": "10.20.5.7/24"}, r"postgres_subnet_cidr='10.20.5.7/24' is invalid: must be an IPv4"),
    ({"namespace": "Inference_NS"}, r"namespace='Inference_NS' is invalid"),
    ({"backoff_limit": -1}, r"backoff_limit=-1 is invalid"),
    ({"tolerations": ("CriticalAddonsOnly",)}, r"tolerations='CriticalAddonsOnly' is invalid"),
    ({"app_role_name": "id-inferforge-prod-inference"},
     r"app_role_name='id-inferforge-prod-inference' is invalid: and app_principal_object_id must be set together"),
    ({"app_schema": "Rag-Tables"}, r"app_schema='Rag-Tables' is invalid: must be a lower-case SQL identifier"),
    ({"embedding_dimensions": 2001, "app_role_name": "r", "app_principal_object_id": "o"},
     r"embedding_dimensions=2001 is invalid: must be an integer between 1 and 2000"),
    ({"embedding_dimensions": 0, "app_role_name": "r", "app_principal_object_id": "o"},
     r"embedding_dimensions=0 is invalid"),
    ({"embedding_dimensions": 768}, r"embedding_dimensions=768 is invalid: needs app_role_name"),
])
def test_bad_args_are_rejected_with_a_message_naming_field_and_rule(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(PgvectorExtensionConfigError, match=message):
        job_args(**overrides)


def test_dev_may_use_tagged_images_when_allowed() -> None:
    args = job_args(azure_cli_image="mcr.microsoft.com/azure-cli:2.67.0", postgres_client_image="postgres:17",
                    allow_image_tags=True)
    (psql,) = pod_of(render_job(args))["spec"]["containers"]
    assert psql["image"] == "postgres:17"


def test_prod_shaped_job_passes_the_policy_pack_with_the_prod_config() -> None:
    violations = evaluate(render_resources(job_args()), config_path_for("prod"), "prod")
    assert [(v.policy_name, v.message) for v in violations] == []


def test_policy_pack_rejects_upstream_registries_in_prod() -> None:
    upstream = job_args(azure_cli_image="mcr.microsoft.com/azure-cli@sha256:" + "1" * 64)
    violations = evaluate(render_resources(upstream), config_path_for("prod"), "prod")
    assert [v.policy_name for v in violations] == ["k8s-allowed-registry"]


SERVER_ROLE = "id-inferforge-prod-inference"
SERVER_OID = "00000000-0000-0000-0000-0000000000bb"


@pytest.fixture(scope="module")
def role_objects() -> dict[str, dict[str, Any]]:
    return render_job(job_args(app_role_name=SERVER_ROLE, app_principal_object_id=SERVER_OID))


def test_job_creates_the_serving_role_once_as_a_non_admin_entra_principal(role_objects) -> None:
    (psql,) = pod_of(role_objects)["spec"]["containers"]
    script = psql["command"][-1]
    env = {e["name"]: e["value"] for e in psql["env"]}
    assert (env["APP_ROLE"], env["APP_OBJECT_ID"], env["APP_SCHEMA"]) == (SERVER_ROLE, SERVER_OID, "rag")
    assert env["PGUSER"] == "id-inferforge-prod-pgadmin"  # the Job runs as the admin, not as the server
    # In `postgres` (where pgaadauth lives), only when absent: isAdmin false, isMfa false, type service.
    role_step, grants_step = script.split("exec psql", 1)
    assert "-d postgres" in role_step and "ON_ERROR_STOP=1" in role_step
    assert ("pgaadauth_create_principal_with_oid(:'app_role', :'app_oid', 'service', false, false)\n"
            " WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app_role');") in role_step
    assert "-d " not in grants_step and "ON_ERROR_STOP=1" in grants_step  # PGDATABASE: the application database
    assert "CREATE EXTENSION IF NOT EXISTS vector;" in grants_step


def test_serving_role_gets_data_access_only_and_the_job_fails_otherwise(role_objects) -> None:
    (psql,) = pod_of(role_objects)["spec"]["containers"]
    script = psql["command"][-1]
    granted = set(re.findall(r"GRANT ((?:[A-Z]+(?:, )?)+) ON ", script))
    assert granted == {"CONNECT", "USAGE", "SELECT, INSERT, UPDATE, DELETE", "USAGE, SELECT"}
    for forbidden in ("GRANT CREATE", "ALL PRIVILEGES", "SUPERUSER", "GRANT azure_pg_admin", "TRUNCATE"):
        assert forbidden not in script
    for check in ("rolsuper OR rolcreaterole OR rolcreatedb", "has_schema_privilege(app_role, app_schema, 'CREATE')",
                  "g.rolname = 'azure_pg_admin'", "RAISE EXCEPTION 'role % has more than data access"):
        assert check in script


def test_role_objects_validate_and_pass_the_prod_pack(role_objects) -> None:
    for manifest in role_objects.values():
        kubernetes_validate.validate(manifest, CLUSTER_VERSION, strict=True)
    violations = evaluate(render_resources(job_args(app_role_name=SERVER_ROLE, app_principal_object_id=SERVER_OID)),
                          config_path_for("prod"), "prod")
    assert violations == []


def test_embeddings_table_gets_the_configured_dimension_and_an_hnsw_cosine_index() -> None:
    objects = render_job(job_args(app_role_name=SERVER_ROLE, app_principal_object_id=SERVER_OID,
                                  embedding_dimensions=1024))
    (psql,) = pod_of(objects)["spec"]["containers"]
    env = {e["name"]: e["value"] for e in psql["env"]}
    assert env["EMBEDDING_DIMENSIONS"] == "1024"
    grants_step = psql["command"][-1].split("exec psql", 1)[1]
    assert '-v embedding_dimensions="$EMBEDDING_DIMENSIONS"' in grants_step
    # Created before the grants, so the serving role's data access covers it; idempotent.
    table = grants_step.index("CREATE TABLE IF NOT EXISTS %I.embeddings")
    assert table < grants_step.index("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES")
    assert "'embedding vector(%s) NOT NULL, '" in grants_step
    assert "CREATE INDEX IF NOT EXISTS embeddings_embedding_hnsw ON %I.embeddings '" in grants_step
    assert "'USING hnsw (embedding vector_cosine_ops)'" in grants_step
    # An existing table of another dimension fails the Job instead of being silently kept.
    assert "IF embedding_type IS DISTINCT FROM format('vector(%s)', embedding_dimensions) THEN" in grants_step
    for manifest in objects.values():
        kubernetes_validate.validate(manifest, CLUSTER_VERSION, strict=True)


def test_no_embeddings_table_without_a_dimension(role_objects) -> None:
    (psql,) = pod_of(role_objects)["spec"]["containers"]
    assert {e["name"]: e["value"] for e in psql["env"]}["EMBEDDING_DIMENSIONS"] == "0"
    assert "IF embedding_dimensions > 0 THEN" in psql["command"][-1]


def test_stack_config_embedding_dimensions_reach_the_schema_job() -> None:
    import copy

    from inferforge.stacks.render import render_stack

    from tests.stack_overrides import WITH_WORKLOADS

    overrides = copy.deepcopy(WITH_WORKLOADS)
    overrides["inference"]["embeddingDimensions"] = 768
    resources = render_stack("dev", overrides)
    (job,) = [r for r in resources if r.type == "kubernetes:batch/v1:Job" and r.name == "pgvector-job"]
    (psql,) = job.inputs["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e["value"] for e in psql["env"]}["EMBEDDING_DIMENSIONS"] == "768"
