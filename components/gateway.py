"""AiGateway: the governed front door of the models (gateway/), deployed in front of the model servers.

What it renders (all in its own namespace, Pod Security ``restricted``):

- the gateway Deployment (at least 2 replicas, spread across zones and nodes, non-root, read-only root
  filesystem, probes on /ready and /health) with a HorizontalPodAutoscaler on CPU and a
  PodDisruptionBudget, its ServiceAccount federated with the gateway's own workload identity;
- the internal load balancer Service with its Private Link Service: Front Door's origin is the gateway,
  never a model server (those become cluster-internal, reachable only from this namespace);
- a SecretProviderClass that mounts two Key Vault secrets as files, through the AKS Key Vault secrets
  provider and the workload identity: the API-key pepper and the model servers' key the gateway presents;
- the schema migration as a Job at deploy time and a daily CronJob (which also creates the coming months'
  usage and audit partitions), run as the PostgreSQL Entra admin identity: it creates the gateway's
  database role for the gateway identity (``pgaadauth``), the schema, and grants that role SELECT on
  tenants and keys and INSERT on usage and audit, nothing more;
- NetworkPolicies: the gateway takes traffic only from the PLS and node subnets (Front Door) and the
  metrics scraper, and reaches only DNS, the model namespaces, PostgreSQL, Key Vault/Redis private
  endpoints and Entra ID; the migration pods reach only DNS, PostgreSQL and Entra ID.

The gateway signs in to PostgreSQL and Redis with Entra tokens (``--database-auth entra``,
``--redis-auth entra``): the platform keeps password and access-key authentication off. Prerequisites the
stack wires (this component creates none of them): the gateway identity's federated credential for
:attr:`AiGatewayArgs.federated_subject`, Key Vault Secrets User for it on the vault, a Redis access policy
assignment for it, and the admin identity's federated credential for
:attr:`AiGatewayArgs.migration_federated_subject`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from . import package
from .egress_endpoints import ENTRA_ID_IPV4_RANGES
from .kubernetes import (
    NON_ROOT_UID,
    WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION,
    WORKLOAD_IDENTITY_USE_LABEL,
    KubernetesArgsError,
    check_cidr,
    check_dns_label,
    check_range,
    dns_egress_rule,
    fail,
    federated_credential_subject,
    kubernetes_provider,
    name_of,
    pod_security_labels,
    private_link_service_annotations,
    public_ip_block,
    reported_as,
    restricted_container_security,
)
from .limits import limited

GATEWAY_PORT = 8080
"""Port the gateway listens on (``serve --port``); also its metrics port."""
SECRETS_MOUNT = "/mnt/secrets"
POSTGRES_PORT = 5432
MIGRATION_DEADLINE_S = 600
PULUMI_TIMEOUT_ANNOTATION = "pulumi.com/timeoutSeconds"

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_SECRET = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class AiGatewayConfigError(KubernetesArgsError):
    """Invalid AiGateway arguments (raised before any resource is registered)."""


@package.schema_args
@dataclass
class AiGatewayArgs:
    """Arguments of :class:`AiGateway`; defaults are the secure, production-shaped choice."""

    image_registry: str
    """Registry host of the gateway image (the platform's registry; AKS pulls with the kubelet identity)."""
    image_repository: str
    """Repository of the gateway image inside the registry."""
    upstreams: Mapping[str, str]
    """Model name clients send -> base URL of the model server in the cluster (``--upstream``)."""
    upstream_namespaces: Sequence[str]
    """Namespaces of those model servers: the only in-cluster destinations of the gateway's egress."""
    workload_identity_client_id: pulumi.Input[str]
    """Client id of the gateway's own user-assigned identity (Key Vault, Redis, PostgreSQL; no secret)."""
    workload_identity_principal_id: pulumi.Input[str]
    """Its object id: the Redis user of its access policy assignment and its PostgreSQL role's Entra object."""
    migration_identity_client_id: pulumi.Input[str]
    """Client id of the PostgreSQL Entra admin identity the migration runs as (never the serving identity)."""
    migration_principal_name: str
    """That identity's principal name, its PostgreSQL user name."""
    migration_identity_principal_id: pulumi.Input[str]
    """Its object id: the Redis user an admin pod revokes keys as (it needs its own access policy assignment)."""
    tenant_id: pulumi.Input[str]
    """Entra tenant of the Key Vault (the secrets provider signs in there)."""
    key_vault_name: pulumi.Input[str]
    """Key Vault holding the pepper and the model servers' key."""
    postgres_host: pulumi.Input[str]
    """PostgreSQL server FQDN (private DNS)."""
    postgres_database: pulumi.Input[str]
    """Database whose ``schema`` holds the gateway's tables."""
    postgres_role: str
    """The gateway's PostgreSQL role (named after its identity), created by the migration."""
    redis_host: pulumi.Input[str]
    """Azure Managed Redis host name (private endpoint)."""
    pls_name: str
    """Name of the Private Link Service AKS creates for the gateway's load balancer (Front Door's origin)."""
    pls_subnet_name: str
    """Subnet (same VNet) where the PLS allocates its NAT IPs."""
    pls_subnet_cidr: str
    """CIDR of that subnet: PLS-NATed Front Door traffic arrives from it, so ingress admits it."""
    node_cidr: str
    """AKS node subnet CIDR: load-balancer traffic relayed by kube-proxy arrives from node addresses."""
    private_endpoint_subnet_cidr: str
    """Subnet of the Key Vault and Redis private endpoints."""
    postgres_subnet_cidr: str
    """Delegated subnet of the PostgreSQL server."""
    image_digest: str | None = None
    """``sha256:<64 hex>`` image digest; required unless ``allow_image_tags`` so prod runs exactly what was tested."""
    image_tag: str | None = None
    """Mutable tag, honoured only when ``allow_image_tags`` (dev); a digest wins when both are set."""
    allow_image_tags: bool = False
    """Off by default: tags can be moved under a running deployment, digests cannot."""
    redis_port: int = 10000
    """Managed Redis TLS port."""
    database_schema: str = limited("gateway", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """PostgreSQL schema of the gateway's tables (created by the migration)."""
    key_pepper_secret_name: str = "gateway-key-pepper"
    """Key Vault secret with the pepper of the API keys' keyed hashes (a database dump alone is then useless)."""
    upstream_key_secret_name: str = "inference-api-keys"
    """Key Vault secret the model servers read their keys from; the gateway presents the first one."""
    name: str = "gateway"
    """Base name of the Kubernetes objects and the ``app.kubernetes.io/instance`` label."""
    namespace: str = "gateway"
    """Namespace created for the gateway; part of the federated credential subjects."""
    service_account_name: str = "gateway"
    """ServiceAccount of the gateway pods (federated with the gateway identity)."""
    migration_service_account_name: str = "gateway-migrate"
    """ServiceAccount of the migration pods (federated with the admin identity)."""
    kubernetes_version: str = "1.33"
    """Cluster minor version; pins the Pod Security Standard version."""
    replicas: int = limited(2, ge=2, le=100)
    """Pods at least (the autoscaler's floor): two, so one node or zone loss keeps the endpoint up."""
    max_replicas: int = limited(6, ge=2, le=200)
    """The autoscaler's ceiling."""
    target_cpu_percent: int = limited(70, ge=10, le=95)
    """Average CPU use (of the request) the autoscaler keeps."""
    cpu_millicores: int = limited(1000, ge=100, le=16000)
    """CPU per pod, requests = limits (Guaranteed QoS)."""
    memory_mib: int = limited(1024, ge=256, le=65536)
    """Memory per pod, requests = limits."""
    max_tokens_cap: int = limited(4096, ge=1, le=1048576)
    """The most completion tokens one choice may reserve (``--max-tokens-cap``)."""
    content_safety_endpoint: str | None = limited(None, pattern=r"^https://[a-z0-9.-]+/?$")
    """Azure AI Content Safety endpoint, reached through a private endpoint in the private-endpoint subnet and
    called with the gateway identity (Cognitive Services User); None: no content check."""
    entra_tenant_ids: Sequence[str] = ()
    """Entra tenants whose access tokens the gateway accepts (besides API keys); empty: keys only."""
    entra_audience: str | None = None
    """Audience (application ID URI) those tokens must carry; required with ``entra_tenant_ids``."""
    service_port: int = 80
    """Port of the internal load balancer (Front Door's origin HTTP port over Private Link)."""
    pls_nat_ip_count: int = limited(1, ge=1, le=8)
    """NAT IPs the PLS allocates in its subnet."""
    internal_lb_subnet_name: str | None = None
    """Subnet for the internal LB frontend; None uses the node subnet."""
    internal_lb_ip: str | None = None
    """Static private IP of the ILB frontend (Front Door's origin host name); None lets Azure pick one."""
    metrics_scraper_namespace: str = "kube-system"
    """Namespace of the Prometheus scraper (AKS managed Prometheus runs ama-metrics in kube-system)."""
    entra_egress_cidrs: Sequence[str] = ENTRA_ID_IPV4_RANGES
    """Public ranges for Entra ID (tokens, JWKS) and Content Safety on 443; private ranges always excluded."""
    migration_schedule: str = "17 3 * * *"
    """When the migration CronJob re-runs (daily: it creates the coming months' partitions)."""
    termination_grace_period_s: int = limited(630, ge=30, le=3600)
    """Streams in flight finish before SIGKILL (the upstream read timeout is 600 s)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels on every object (e.g. environment)."""
    canary_upstreams: Mapping[str, str] = field(default_factory=dict)
    """Model name -> base URL of its canary server (a second version beside ``upstreams``'s stable one); none by
    default. Its namespace must be in ``upstream_namespaces``."""
    canary_shares: Mapping[str, int] = field(default_factory=dict)
    """Model name -> percent (0-100) of its requests the canary serves; the stable server serves the rest."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def federated_subject(self) -> str:
        """Subject of the gateway identity's federated credential."""
        return federated_credential_subject(self.namespace, self.service_account_name)

    @property
    def migration_federated_subject(self) -> str:
        """Subject of the admin identity's federated credential for the migration pods."""
        return federated_credential_subject(self.namespace, self.migration_service_account_name)

    @property
    def image(self) -> str:
        if self.image_digest:
            return f"{self.image_registry}/{self.image_repository}@{self.image_digest}"
        return f"{self.image_registry}/{self.image_repository}:{self.image_tag}"

    def validate(self) -> None:
        with reported_as(AiGatewayConfigError):
            for name in ("namespace", "service_account_name", "migration_service_account_name", "name"):
                check_dns_label(name, getattr(self, name))
            for name in ("pls_subnet_cidr", "node_cidr", "private_endpoint_subnet_cidr", "postgres_subnet_cidr"):
                check_cidr(name, getattr(self, name))
            if self.image_digest is not None and not _DIGEST.match(self.image_digest):
                raise fail("image_digest", self.image_digest, "sha256:<64 lowercase hex>")
            if self.image_digest is None:
                if not self.allow_image_tags:
                    raise fail("image_digest", None, "a digest (or allow_image_tags for dev)")
                if self.image_tag is None or not _TAG.match(self.image_tag):
                    raise fail("image_tag", self.image_tag, "a tag when no digest is given")
            if not self.upstreams:
                raise fail("upstreams", {}, "at least one model -> URL")
            for model, url in self.upstreams.items():
                if not _MODEL.match(model):
                    raise fail(f"upstreams[{model!r}]", model, "a model name (letters, digits, . _ / -)")
                if not re.match(r"^http://[a-z0-9.-]+(:\d+)?$", url):
                    raise fail(f"upstreams[{model!r}]", url, "http://<service>.<namespace>.svc.cluster.local[:port]")
            for ns in self.upstream_namespaces:
                check_dns_label("upstream_namespaces", ns)
            for model, url in self.canary_upstreams.items():
                if model not in self.upstreams:
                    raise fail(f"canary_upstreams[{model!r}]", model,
                               f"a model of upstreams ({', '.join(self.upstreams)})")
                if not re.match(r"^http://[a-z0-9.-]+(:\d+)?$", url):
                    raise fail(f"canary_upstreams[{model!r}]", url,
                               "http://<service>.<namespace>.svc.cluster.local[:port]")
                share = self.canary_shares.get(model)
                if not isinstance(share, int) or not 0 <= share <= 100:
                    raise fail(f"canary_shares[{model!r}]", share, "a percent 0-100 for each canary")
            if self.max_replicas < self.replicas:
                raise fail("max_replicas", self.max_replicas, f">= replicas ({self.replicas})")
            for name in ("key_pepper_secret_name", "upstream_key_secret_name"):
                if not _SECRET.match(getattr(self, name)):
                    raise fail(name, getattr(self, name), "a Key Vault secret name (letters, digits, -)")
            bad = [t for t in self.entra_tenant_ids if not _GUID.match(t)]
            if bad:
                raise fail("entra_tenant_ids", bad[0], "Entra tenant ids (lowercase GUIDs)")
            if self.entra_tenant_ids and not self.entra_audience:
                raise fail("entra_audience", None, "the gateway's application ID URI when entra_tenant_ids is set")
            check_range("redis_port", self.redis_port, 1, 65535)
            check_range("service_port", self.service_port, 1, 65535)


class AiGateway(pulumi.ComponentResource):
    """The AI gateway in front of the model servers: identity, limits, usage, audit, cache, content safety."""

    namespace: pulumi.Output[str]
    """Namespace of the gateway."""
    service_name: pulumi.Output[str]
    """Name of the internal load-balancer Service (behind the PLS)."""
    deployment_name: pulumi.Output[str]
    """Name of the gateway Deployment."""
    pls_name: pulumi.Output[str]
    """Name of the Private Link Service AKS creates for the gateway's load balancer."""
    admin_pod_overrides: pulumi.Output[str]
    """``kubectl run --overrides`` JSON for a one-off admin pod (tenants, keys, usage) as the admin identity."""

    def __init__(self, name: str, args: AiGatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(AiGatewayArgs, args)
        args.validate()
        provider = kubernetes_provider(opts, "AiGateway", AiGatewayConfigError)
        super().__init__("inferforge:index:AiGateway", name, None, opts)
        self._args = args
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        replace_named = pulumi.ResourceOptions(parent=self, provider=provider, delete_before_replace=True)
        self._labels = {"app.kubernetes.io/name": "inferforge-gateway", "app.kubernetes.io/instance": args.name,
                        "app.kubernetes.io/part-of": "inferforge", "app.kubernetes.io/managed-by": "pulumi",
                        **args.labels}
        self._selector = {"app.kubernetes.io/name": "inferforge-gateway", "app.kubernetes.io/instance": args.name}
        self._migration_selector = {"app.kubernetes.io/name": "inferforge-gateway-migrate",
                                    "app.kubernetes.io/instance": args.name}

        namespace = k8s.core.v1.Namespace(
            f"{name}-ns", metadata=k8s.meta.v1.ObjectMetaArgs(
                name=args.namespace, labels={**self._labels, **pod_security_labels(args.kubernetes_version)}),
            opts=child)
        self._ns = name_of(namespace)

        service_account = k8s.core.v1.ServiceAccount(
            f"{name}-sa", metadata=self._meta(args.service_account_name, annotations={
                WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION: args.workload_identity_client_id}),
            automount_service_account_token=False, opts=child)
        migration_account = k8s.core.v1.ServiceAccount(
            f"{name}-migrate-sa", metadata=self._meta(args.migration_service_account_name, annotations={
                WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION: args.migration_identity_client_id}),
            automount_service_account_token=False, opts=child)

        # Two classes: the CSI driver signs in as the clientID's identity with the pod's own federated token,
        # so the gateway pods and the admin pods (the admin identity) each need theirs.
        secrets = self._secret_provider_class(f"{name}-secrets", f"{args.name}-secrets",
                                              args.workload_identity_client_id,
                                              [args.key_pepper_secret_name, args.upstream_key_secret_name], child)
        self._secret_provider_class(f"{name}-admin-secrets", f"{args.name}-admin-secrets",
                                    args.migration_identity_client_id, [args.key_pepper_secret_name], child)

        migrate_template = self._migration_pod()
        migrate_job = k8s.batch.v1.Job(
            f"{name}-migrate",
            metadata=self._meta(f"{args.name}-migrate", annotations={
                PULUMI_TIMEOUT_ANNOTATION: str(MIGRATION_DEADLINE_S + 300)}),
            spec=k8s.batch.v1.JobSpecArgs(backoff_limit=4, ttl_seconds_after_finished=86400,
                                          active_deadline_seconds=MIGRATION_DEADLINE_S, template=migrate_template),
            opts=pulumi.ResourceOptions.merge(replace_named, pulumi.ResourceOptions(
                depends_on=[migration_account], replace_on_changes=["spec"],
                # The Job's own deadline plus time for its pod to be scheduled and its image pulled.
                custom_timeouts=pulumi.CustomTimeouts(create=f"{MIGRATION_DEADLINE_S + 300}s"))))
        k8s.batch.v1.CronJob(
            f"{name}-migrate-daily",
            metadata=self._meta(f"{args.name}-migrate-daily"),
            spec=k8s.batch.v1.CronJobSpecArgs(
                schedule=args.migration_schedule, concurrency_policy="Forbid", successful_jobs_history_limit=1,
                failed_jobs_history_limit=3,
                job_template=k8s.batch.v1.JobTemplateSpecArgs(spec=k8s.batch.v1.JobSpecArgs(
                    backoff_limit=4, active_deadline_seconds=MIGRATION_DEADLINE_S, template=migrate_template))),
            opts=pulumi.ResourceOptions.merge(replace_named, pulumi.ResourceOptions(depends_on=[migration_account])))

        deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment", metadata=self._meta(args.name), spec=self._deployment_spec(),
            opts=pulumi.ResourceOptions.merge(replace_named, pulumi.ResourceOptions(
                depends_on=[service_account, secrets, migrate_job])))

        service = k8s.core.v1.Service(
            f"{name}-svc",
            metadata=self._meta(args.name, annotations=private_link_service_annotations(
                pls_name=args.pls_name, pls_subnet_name=args.pls_subnet_name, nat_ip_count=args.pls_nat_ip_count,
                internal_lb_subnet_name=args.internal_lb_subnet_name, internal_lb_ip=args.internal_lb_ip)),
            spec=k8s.core.v1.ServiceSpecArgs(
                type="LoadBalancer", external_traffic_policy="Local", selector=self._selector,
                ports=[k8s.core.v1.ServicePortArgs(name="http", protocol="TCP", port=args.service_port,
                                                   target_port="http")]),
            opts=replace_named)

        hpa = k8s.autoscaling.v2
        hpa.HorizontalPodAutoscaler(
            f"{name}-hpa", metadata=self._meta(args.name),
            spec=hpa.HorizontalPodAutoscalerSpecArgs(
                scale_target_ref=hpa.CrossVersionObjectReferenceArgs(
                    api_version="apps/v1", kind="Deployment", name=args.name),
                min_replicas=args.replicas, max_replicas=args.max_replicas,
                metrics=[hpa.MetricSpecArgs(type="Resource", resource=hpa.ResourceMetricSourceArgs(
                    name="cpu", target=hpa.MetricTargetArgs(
                        type="Utilization", average_utilization=args.target_cpu_percent)))]),
            opts=pulumi.ResourceOptions.merge(replace_named, pulumi.ResourceOptions(depends_on=[deployment])))

        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb", metadata=self._meta(args.name),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                max_unavailable=1, selector=k8s.meta.v1.LabelSelectorArgs(match_labels=self._selector),
                unhealthy_pod_eviction_policy="AlwaysAllow"),
            opts=replace_named)

        k8s.networking.v1.NetworkPolicy(f"{name}-netpol", metadata=self._meta(args.name),
                                        spec=self._network_policy_spec(), opts=replace_named)
        k8s.networking.v1.NetworkPolicy(f"{name}-migrate-netpol", metadata=self._meta(f"{args.name}-migrate"),
                                        spec=self._migration_network_policy_spec(), opts=replace_named)

        self.namespace = self._ns
        self.service = service
        self.service_name = name_of(service)
        self.deployment_name = name_of(deployment)
        self.pls_name = pulumi.Output.from_input(args.pls_name)
        self.admin_pod_overrides = pulumi.Output.all(
            self._admin_env(), args.migration_service_account_name).apply(
                lambda values: json.dumps(_admin_overrides(values[0], values[1], args.name)))
        self.register_outputs({"namespace": self.namespace, "service_name": self.service_name,
                               "deployment_name": self.deployment_name, "pls_name": self.pls_name,
                               "admin_pod_overrides": self.admin_pod_overrides})

    # ----------------------------------------------------------------------------------------- helpers
    def _secret_provider_class(self, resource_name: str, name: str, client_id: pulumi.Input[str],
                               secret_names: Sequence[str], child: pulumi.ResourceOptions
                               ) -> k8s.apiextensions.CustomResource:
        objects = "array:\n" + "".join(f"  - |\n    objectName: {secret}\n    objectType: secret\n"
                                       for secret in secret_names)
        return k8s.apiextensions.CustomResource(
            resource_name, api_version="secrets-store.csi.x-k8s.io/v1", kind="SecretProviderClass",
            metadata=self._meta(name),
            spec={"provider": "azure", "parameters": {
                "usePodIdentity": "false", "clientID": client_id, "keyvaultName": self._args.key_vault_name,
                "tenantId": self._args.tenant_id, "objects": objects}},
            opts=child)

    def _meta(self, name: str, annotations: Mapping[str, pulumi.Input[str]] | None = None
              ) -> k8s.meta.v1.ObjectMetaArgs:
        return k8s.meta.v1.ObjectMetaArgs(name=name, namespace=self._ns, labels=self._labels,
                                          annotations=dict(annotations) if annotations else None)

    def _database_url(self, user: str) -> pulumi.Output[str]:
        args = self._args
        return pulumi.Output.concat("postgresql://", user, "@", args.postgres_host, ":", str(POSTGRES_PORT), "/",
                                    args.postgres_database, "?sslmode=require")

    def _connection_env(self, user: str) -> list[k8s.core.v1.EnvVarArgs]:
        args = self._args
        env = k8s.core.v1.EnvVarArgs
        return [
            env(name="INFERFORGE_GATEWAY_DATABASE_URL", value=self._database_url(user)),
            env(name="INFERFORGE_GATEWAY_DATABASE_AUTH", value="entra"),
            env(name="INFERFORGE_GATEWAY_SCHEMA", value=args.database_schema),
        ]

    def _redis_env(self) -> list[k8s.core.v1.EnvVarArgs]:
        args = self._args
        env = k8s.core.v1.EnvVarArgs
        return [
            env(name="INFERFORGE_GATEWAY_REDIS_URL",
                value=pulumi.Output.concat("rediss://", args.redis_host, ":", str(args.redis_port), "/0")),
            env(name="INFERFORGE_GATEWAY_REDIS_AUTH", value="entra"),
            env(name="INFERFORGE_GATEWAY_REDIS_USERNAME", value=args.workload_identity_principal_id),
            env(name="INFERFORGE_GATEWAY_KEY_PEPPER_FILE", value=f"{SECRETS_MOUNT}/{args.key_pepper_secret_name}"),
        ]

    def _admin_env(self) -> pulumi.Output[list[dict[str, str]]]:
        """What an admin pod needs: the admin's database sign-in (tenants, keys) and the pepper (new keys)."""
        args = self._args
        return pulumi.Output.all(self._database_url(args.migration_principal_name), args.redis_host,
                                 args.migration_identity_principal_id).apply(lambda v: [
            {"name": "INFERFORGE_GATEWAY_DATABASE_URL", "value": v[0]},
            {"name": "INFERFORGE_GATEWAY_DATABASE_AUTH", "value": "entra"},
            {"name": "INFERFORGE_GATEWAY_SCHEMA", "value": args.database_schema},
            {"name": "INFERFORGE_GATEWAY_REDIS_URL", "value": f"rediss://{v[1]}:{args.redis_port}/0"},
            {"name": "INFERFORGE_GATEWAY_REDIS_AUTH", "value": "entra"},
            {"name": "INFERFORGE_GATEWAY_REDIS_USERNAME", "value": v[2]},
            {"name": "INFERFORGE_GATEWAY_KEY_PEPPER_FILE", "value": f"{SECRETS_MOUNT}/{args.key_pepper_secret_name}"},
        ])

    def _serve_args(self) -> list[str]:
        args = self._args
        argv = ["serve", "--host", "0.0.0.0", "--port", str(GATEWAY_PORT),
                "--upstream-api-key-file", f"{SECRETS_MOUNT}/{args.upstream_key_secret_name}",
                "--max-tokens-cap", str(args.max_tokens_cap)]
        for model, url in sorted(args.upstreams.items()):
            canary = args.canary_upstreams.get(model)
            if canary is None:
                argv += ["--upstream", f"{model}={url}"]
            else:  # two versions by weight (gateway/routing.py)
                share = args.canary_shares[model]
                argv += ["--upstream", f"{model}={url}@{100 - share}:stable",
                         "--upstream", f"{model}={canary}@{share}:canary"]
        if args.content_safety_endpoint:
            argv += ["--safety", "azure", "--safety-endpoint", args.content_safety_endpoint]
        for tenant in args.entra_tenant_ids:
            argv += ["--entra-tenant-id", tenant]
        if args.entra_audience:
            argv += ["--entra-audience", args.entra_audience]
        return argv

    def _secrets_volume(self) -> k8s.core.v1.VolumeArgs:
        return k8s.core.v1.VolumeArgs(name="secrets", csi=k8s.core.v1.CSIVolumeSourceArgs(
            driver="secrets-store.csi.k8s.io", read_only=True,
            volume_attributes={"secretProviderClass": f"{self._args.name}-secrets"}))

    def _pod_security_context(self) -> k8s.core.v1.PodSecurityContextArgs:
        return k8s.core.v1.PodSecurityContextArgs(
            run_as_non_root=True, run_as_user=NON_ROOT_UID, run_as_group=NON_ROOT_UID,
            seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"))

    def _resources(self, cpu_m: int, memory_mib: int) -> k8s.core.v1.ResourceRequirementsArgs:
        resources = {"cpu": f"{cpu_m}m", "memory": f"{memory_mib}Mi", "ephemeral-storage": "256Mi"}
        return k8s.core.v1.ResourceRequirementsArgs(requests=resources, limits=resources)

    def _deployment_spec(self) -> k8s.apps.v1.DeploymentSpecArgs:
        args = self._args
        http = k8s.core.v1.HTTPGetActionArgs
        container = k8s.core.v1.ContainerArgs(
            name="gateway", image=args.image, image_pull_policy="IfNotPresent", args=self._serve_args(),
            ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=GATEWAY_PORT, protocol="TCP")],
            env=[*self._connection_env(args.postgres_role), *self._redis_env()],
            resources=self._resources(args.cpu_millicores, args.memory_mib),
            volume_mounts=[k8s.core.v1.VolumeMountArgs(name="secrets", mount_path=SECRETS_MOUNT, read_only=True),
                           k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp")],
            startup_probe=k8s.core.v1.ProbeArgs(http_get=http(path="/ready", port="http"), period_seconds=2,
                                                failure_threshold=60, timeout_seconds=3),
            readiness_probe=k8s.core.v1.ProbeArgs(http_get=http(path="/ready", port="http"), period_seconds=5,
                                                  failure_threshold=2, timeout_seconds=3),
            liveness_probe=k8s.core.v1.ProbeArgs(http_get=http(path="/health", port="http"), period_seconds=10,
                                                 failure_threshold=3, timeout_seconds=3),
            lifecycle=k8s.core.v1.LifecycleArgs(pre_stop=k8s.core.v1.LifecycleHandlerArgs(
                sleep=k8s.core.v1.SleepActionArgs(seconds=10))),
            security_context=restricted_container_security(),
            termination_message_policy="FallbackToLogsOnError")
        spread = [k8s.core.v1.TopologySpreadConstraintArgs(
            max_skew=1, topology_key=key, when_unsatisfiable=mode,
            label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=self._selector))
            for key, mode in (("topology.kubernetes.io/zone", "ScheduleAnyway"),
                              ("kubernetes.io/hostname", "DoNotSchedule"))]
        return k8s.apps.v1.DeploymentSpecArgs(
            # The HPA owns the replica count after creation; this is its floor at the first rollout.
            replicas=args.replicas, revision_history_limit=5,
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=self._selector),
            strategy=k8s.apps.v1.DeploymentStrategyArgs(type="RollingUpdate", rolling_update=(
                k8s.apps.v1.RollingUpdateDeploymentArgs(max_surge=1, max_unavailable=0))),
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    labels={**self._labels, WORKLOAD_IDENTITY_USE_LABEL: "true"},
                    annotations={"prometheus.io/scrape": "true", "prometheus.io/port": str(GATEWAY_PORT),
                                 "prometheus.io/path": "/metrics"}),
                spec=k8s.core.v1.PodSpecArgs(
                    service_account_name=args.service_account_name, automount_service_account_token=False,
                    enable_service_links=False, termination_grace_period_seconds=args.termination_grace_period_s,
                    security_context=self._pod_security_context(), topology_spread_constraints=spread,
                    containers=[container],
                    volumes=[self._secrets_volume(), k8s.core.v1.VolumeArgs(
                        name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="64Mi"))])))

    def _migration_pod(self) -> k8s.core.v1.PodTemplateSpecArgs:
        args = self._args
        container = k8s.core.v1.ContainerArgs(
            name="migrate", image=args.image, image_pull_policy="IfNotPresent",
            args=["migrate", "--grant-to", args.postgres_role, "--entra-principal-oid",
                  args.workload_identity_principal_id],
            env=self._connection_env(args.migration_principal_name),
            resources=self._resources(250, 256), security_context=restricted_container_security(),
            volume_mounts=[k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp")],
            termination_message_policy="FallbackToLogsOnError")
        return k8s.core.v1.PodTemplateSpecArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(labels={**self._labels, **self._migration_selector,
                                                        WORKLOAD_IDENTITY_USE_LABEL: "true"}),
            spec=k8s.core.v1.PodSpecArgs(
                service_account_name=args.migration_service_account_name, automount_service_account_token=False,
                enable_service_links=False, restart_policy="Never", security_context=self._pod_security_context(),
                containers=[container],
                volumes=[k8s.core.v1.VolumeArgs(name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                    size_limit="16Mi"))]))

    def _network_policy_spec(self) -> k8s.networking.v1.NetworkPolicySpecArgs:
        args = self._args
        np = k8s.networking.v1
        port = [np.NetworkPolicyPortArgs(protocol="TCP", port=GATEWAY_PORT)]
        by_namespace = [np.NetworkPolicyPeerArgs(namespace_selector=k8s.meta.v1.LabelSelectorArgs(
            match_labels={"kubernetes.io/metadata.name": ns})) for ns in sorted(set(args.upstream_namespaces))]
        return np.NetworkPolicySpecArgs(
            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=self._selector),
            policy_types=["Ingress", "Egress"],
            ingress=[
                # Front Door -> Private Link Service (NAT in the PLS subnet) -> internal LB -> node -> pod.
                np.NetworkPolicyIngressRuleArgs(from_=[
                    np.NetworkPolicyPeerArgs(ip_block=np.IPBlockArgs(cidr=args.pls_subnet_cidr)),
                    np.NetworkPolicyPeerArgs(ip_block=np.IPBlockArgs(cidr=args.node_cidr))], ports=port),
                np.NetworkPolicyIngressRuleArgs(from_=[np.NetworkPolicyPeerArgs(
                    namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                        match_labels={"kubernetes.io/metadata.name": args.metrics_scraper_namespace}))], ports=port),
            ],
            egress=[
                dns_egress_rule(),
                np.NetworkPolicyEgressRuleArgs(to=by_namespace, ports=[np.NetworkPolicyPortArgs(protocol="TCP",
                                                                                                port=8000)]),
                np.NetworkPolicyEgressRuleArgs(
                    to=[np.NetworkPolicyPeerArgs(ip_block=np.IPBlockArgs(cidr=args.private_endpoint_subnet_cidr))],
                    ports=[np.NetworkPolicyPortArgs(protocol="TCP", port=443),
                           np.NetworkPolicyPortArgs(protocol="TCP", port=args.redis_port)]),
                *self._database_and_entra_egress(),
            ])

    def _migration_network_policy_spec(self) -> k8s.networking.v1.NetworkPolicySpecArgs:
        np = k8s.networking.v1
        return np.NetworkPolicySpecArgs(
            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=self._migration_selector),
            policy_types=["Ingress", "Egress"], ingress=[],
            egress=[dns_egress_rule(), *self._database_and_entra_egress()])

    def _database_and_entra_egress(self) -> list[k8s.networking.v1.NetworkPolicyEgressRuleArgs]:
        """PostgreSQL in its delegated subnet, and Entra ID (tokens, accepted tenants' JWKS): public HTTPS,
        never IMDS."""
        args = self._args
        np = k8s.networking.v1
        return [
            np.NetworkPolicyEgressRuleArgs(
                to=[np.NetworkPolicyPeerArgs(ip_block=np.IPBlockArgs(cidr=args.postgres_subnet_cidr))],
                ports=[np.NetworkPolicyPortArgs(protocol="TCP", port=POSTGRES_PORT)]),
            np.NetworkPolicyEgressRuleArgs(
                to=[np.NetworkPolicyPeerArgs(ip_block=public_ip_block(cidr)) for cidr in args.entra_egress_cidrs],
                ports=[np.NetworkPolicyPortArgs(protocol="TCP", port=443)]),
        ]


def _admin_overrides(env: list[dict[str, str]], service_account: str, name: str) -> dict[str, object]:
    """A pod spec override for `kubectl run`: the admin identity, the pepper mounted, restricted security."""
    security = {"runAsNonRoot": True, "runAsUser": NON_ROOT_UID, "runAsGroup": NON_ROOT_UID,
                "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    return {"apiVersion": "v1", "metadata": {"labels": {WORKLOAD_IDENTITY_USE_LABEL: "true",
                                                        "app.kubernetes.io/name": "inferforge-gateway-migrate"}},
            "spec": {"serviceAccountName": service_account, "automountServiceAccountToken": False,
                     "containers": [{"name": "admin", "env": env, "securityContext": security,
                                     "volumeMounts": [{"name": "secrets", "mountPath": SECRETS_MOUNT,
                                                       "readOnly": True}]}],
                     "volumes": [{"name": "secrets", "csi": {"driver": "secrets-store.csi.k8s.io", "readOnly": True,
                                                             "volumeAttributes": {
                                                                 "secretProviderClass": f"{name}-admin-secrets"}}}]}}
