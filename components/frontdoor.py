"""Front Door Premium with WAF in front of a Private Link Service (the only public entry point).

Private Link origins and managed WAF rule sets need the Premium SKU. The WAF policy is
`frontdoor.Policy` (Front Door's), not `network.WebApplicationFirewallPolicy` (Application
Gateway's). The origin is the Private Link Service AKS creates for the inference Service's internal
load balancer; Front Door's private endpoint connection to it must be approved once (README).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import pulumi
from pulumi_azure_native import cdn, frontdoor

from . import package
from .common import diagnostic_settings
from .limits import limited


class WafMode(StrEnum):
    """Whether the WAF only logs matches (Detection) or blocks them (Prevention)."""

    DETECTION = "Detection"
    PREVENTION = "Prevention"

SKU = "Premium_AzureFrontDoor"


@package.schema_args
@dataclass
class FrontDoorOrigin:
    """Another region's Private Link origin in the same origin group (multi-region stamps, issue 22)."""

    private_link_service_id: pulumi.Input[str]
    """That region's Private Link Service; each origin's private endpoint connection is approved on its own PLS."""
    private_link_location: pulumi.Input[str]
    """The region of that Private Link Service."""
    host_name: pulumi.Input[str]
    """Private IP of that region's internal load balancer."""
    priority: int = limited(1, ge=1, le=5)
    """Front Door sends to the lowest priority among healthy origins: 1 everywhere is active/active, 2 a passive
    standby that gets traffic only when every priority-1 origin is unhealthy."""
    weight: int = limited(50, ge=1, le=1000)
    """Share among origins of the same priority inside the latency band (50: Azure's default; no effect with
    latency sensitivity 0)."""
    name: str = limited("aks-private-link-2", pattern=r"^[a-zA-Z0-9][a-zA-Z0-9-]{0,88}$")
    """Origin name, unique in the group."""



@package.schema_args
@dataclass
class FrontDoorArgs:
    """Arguments of `FrontDoor`."""

    resource_group_name: pulumi.Input[str]
    """Resource group of the profile."""
    profile_name: str
    """CAF name (`afd-<workload>-<env>`)."""
    endpoint_name: str
    """Endpoint name; Front Door appends a hash to make the host name unique."""
    waf_policy_name: str
    """WAF policy name (letters and digits only)."""
    private_link_service_id: pulumi.Input[str]
    """Private Link Service in front of the AKS internal load balancer (origin target)."""
    private_link_location: pulumi.Input[str]
    """Region of that Private Link Service."""
    origin_host_name: pulumi.Input[str]
    """Private IP of the internal load balancer (the PLS NATs to it)."""
    log_analytics_workspace_id: pulumi.Input[str]
    """Workspace for access, WAF and health-probe logs."""
    waf_mode: WafMode = WafMode.PREVENTION
    """Prevention blocks matches; Detection only logs them (dev). The edge policy requires Prevention in prod."""
    rate_limit_per_minute: int = limited(600, ge=10, le=100000)
    """Requests per minute per client IP before the WAF answers 429."""
    origin_port: int = 80
    """Port of the internal load balancer (HTTP inside the private link; TLS terminates at Front Door)."""
    health_probe_path: str = "/ready"
    """Unauthenticated readiness path of the inference server. Front Door probes each origin directly,
    not through a route (https://learn.microsoft.com/azure/frontdoor/health-probes), so it needs no route."""
    origin_priority: int = limited(1, ge=1, le=5)
    """Priority of this stack's origin (1: active)."""
    origin_weight: int = limited(50, ge=1, le=1000)
    """Weight of this stack's origin among origins of the same priority."""
    other_origins: Sequence[FrontDoorOrigin] = ()
    """Other regions' origins in the same group: with one, a regional outage fails over automatically."""
    probe_interval_seconds: int = limited(30, ge=5, le=255)
    """Health probe interval; failover takes up to interval x sample size (2 min by default)."""
    sample_size: int = limited(4, ge=1, le=255)
    """Probes Front Door weighs for an origin's health."""
    successful_samples_required: int = limited(3, ge=1, le=255)
    """Of those, how many must succeed for the origin to count as healthy."""
    latency_sensitivity_ms: int = limited(50, ge=0, le=1000)
    """Origins this much slower than the fastest still share traffic by weight; 0 sends all to the fastest."""
    route_patterns: Sequence[str] = ("/v1/*",)
    """Paths Front Door forwards: the OpenAI API only. Never `/*`: the server's unauthenticated
    `/metrics`, `/health` and `/ready` must stay private (the `frontdoor-route-api-only` policy)."""
    origin_response_timeout_seconds: int = 240
    """Generous: a long completion streams for minutes."""
    origin_depends_on: Sequence[pulumi.Resource] = package.python_only(default=())
    """What must exist before the origin: the Kubernetes Service whose annotations make AKS create the
    Private Link Service (the origin's private link target); Azure rejects an origin to a missing PLS."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Tags required by the tagging policy."""


class FrontDoor(pulumi.ComponentResource):
    """Profile, endpoint, WAF (managed default + bot rules, rate limit), HTTPS-only route to a private origin."""

    endpoint_host_name: pulumi.Output[str]
    """Host name of the Front Door endpoint clients call (`<endpoint>.z01.azurefd.net`)."""
    profile_id: pulumi.Output[str]
    """ARM id of the Front Door profile."""
    waf_policy_id: pulumi.Output[str]
    """ARM id of the WAF policy."""

    def __init__(self, name: str, args: FrontDoorArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(FrontDoorArgs, args)
        super().__init__("inferforge:index:FrontDoor", name, None, package.aliased(opts, "inferforge:edge:FrontDoor"))
        tags = dict(args.tags)
        child = pulumi.ResourceOptions(parent=self)

        self.waf_policy = frontdoor.Policy(
            f"{name}-waf",
            policy_name=args.waf_policy_name,
            resource_group_name=args.resource_group_name,
            location="Global",
            sku=frontdoor.SkuArgs(name=SKU),
            policy_settings=frontdoor.PolicySettingsArgs(
                enabled_state="Enabled",
                mode=args.waf_mode,
                request_body_check="Enabled",
                custom_block_response_status_code=403,
            ),
            managed_rules=frontdoor.ManagedRuleSetListArgs(managed_rule_sets=[
                frontdoor.ManagedRuleSetArgs(rule_set_type="Microsoft_DefaultRuleSet", rule_set_version="2.1",
                                             rule_set_action="Block"),
                frontdoor.ManagedRuleSetArgs(rule_set_type="Microsoft_BotManagerRuleSet", rule_set_version="1.1"),
            ]),
            custom_rules=frontdoor.CustomRuleListArgs(rules=[
                frontdoor.CustomRuleArgs(
                    name="ratelimitperclient", priority=100, rule_type="RateLimitRule", action="Block",
                    enabled_state="Enabled", rate_limit_duration_in_minutes=1,
                    rate_limit_threshold=args.rate_limit_per_minute,
                    group_by=[frontdoor.GroupByVariableArgs(variable_name="SocketAddr")],
                    match_conditions=[frontdoor.MatchConditionArgs(
                        match_variable="RequestUri", operator="Any", match_value=[])],
                ),
            ]),
            tags=tags,
            opts=child,
        )
        self.profile = cdn.Profile(
            f"{name}-profile",
            profile_name=args.profile_name,
            resource_group_name=args.resource_group_name,
            location="global",
            sku=cdn.SkuArgs(name=SKU),
            origin_response_timeout_seconds=args.origin_response_timeout_seconds,
            tags=tags,
            opts=child,
        )
        self.endpoint = cdn.AFDEndpoint(
            f"{name}-endpoint",
            endpoint_name=args.endpoint_name,
            profile_name=self.profile.name,
            resource_group_name=args.resource_group_name,
            location="global",
            enabled_state="Enabled",
            auto_generated_domain_name_label_scope="TenantReuse",
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self.profile),
        )
        origin_group = cdn.AFDOriginGroup(
            f"{name}-origin-group",
            origin_group_name="inference",
            profile_name=self.profile.name,
            resource_group_name=args.resource_group_name,
            health_probe_settings=cdn.HealthProbeParametersArgs(
                probe_path=args.health_probe_path, probe_protocol="Http", probe_request_type="GET",
                probe_interval_in_seconds=args.probe_interval_seconds,
            ),
            load_balancing_settings=cdn.LoadBalancingSettingsParametersArgs(
                sample_size=args.sample_size, successful_samples_required=args.successful_samples_required,
                additional_latency_in_milliseconds=args.latency_sensitivity_ms,
            ),
            session_affinity_state="Disabled",
            opts=pulumi.ResourceOptions(parent=self.profile),
        )
        origin = cdn.AFDOrigin(
            f"{name}-origin",
            origin_name="aks-private-link",
            origin_group_name=origin_group.name,
            profile_name=self.profile.name,
            resource_group_name=args.resource_group_name,
            host_name=args.origin_host_name,
            origin_host_header=args.origin_host_name,
            http_port=args.origin_port,
            https_port=443,
            priority=args.origin_priority,
            weight=args.origin_weight,
            enabled_state="Enabled",
            enforce_certificate_name_check=True,
            shared_private_link_resource=cdn.SharedPrivateLinkResourcePropertiesArgs(
                private_link=cdn.ResourceReferenceArgs(id=args.private_link_service_id),
                private_link_location=args.private_link_location,
                request_message="inferforge Front Door origin: approve to publish the inference service",
            ),
            opts=pulumi.ResourceOptions(parent=origin_group, depends_on=list(args.origin_depends_on)),
        )
        origins = [origin]
        for other in args.other_origins:
            origins.append(cdn.AFDOrigin(
                f"{name}-origin-{other.name}",
                origin_name=other.name,
                origin_group_name=origin_group.name,
                profile_name=self.profile.name,
                resource_group_name=args.resource_group_name,
                host_name=other.host_name,
                origin_host_header=other.host_name,
                http_port=args.origin_port,
                https_port=443,
                priority=other.priority,
                weight=other.weight,
                enabled_state="Enabled",
                enforce_certificate_name_check=True,
                shared_private_link_resource=cdn.SharedPrivateLinkResourcePropertiesArgs(
                    private_link=cdn.ResourceReferenceArgs(id=other.private_link_service_id),
                    private_link_location=other.private_link_location,
                    request_message="inferforge Front Door origin: approve to publish the inference service",
                ),
                opts=pulumi.ResourceOptions(parent=origin_group),
            ))
        cdn.Route(
            f"{name}-route",
            route_name="inference",
            endpoint_name=self.endpoint.name,
            profile_name=self.profile.name,
            resource_group_name=args.resource_group_name,
            origin_group=cdn.ResourceReferenceArgs(id=origin_group.id),
            # Http is accepted only so it can be redirected: every request is served over HTTPS.
            supported_protocols=["Http", "Https"],
            https_redirect="Enabled",
            # Front Door -> origin stays inside Microsoft's network over Private Link (no public hop).
            forwarding_protocol="HttpOnly",
            link_to_default_domain="Enabled",
            patterns_to_match=list(args.route_patterns),
            enabled_state="Enabled",
            opts=pulumi.ResourceOptions(parent=self.endpoint, depends_on=origins),
        )
        cdn.SecurityPolicy(
            f"{name}-security-policy",
            security_policy_name="waf",
            profile_name=self.profile.name,
            resource_group_name=args.resource_group_name,
            parameters=cdn.SecurityPolicyWebApplicationFirewallParametersArgs(
                type="WebApplicationFirewall",
                waf_policy=cdn.ResourceReferenceArgs(id=self.waf_policy.id),
                associations=[cdn.SecurityPolicyWebApplicationFirewallAssociationArgs(
                    domains=[cdn.ActivatedResourceReferenceArgs(id=self.endpoint.id)],
                    patterns_to_match=["/*"],
                )],
            ),
            opts=pulumi.ResourceOptions(parent=self.profile),
        )
        diagnostic_settings(f"{name}-profile", resource_id=self.profile.id,
                            workspace_id=args.log_analytics_workspace_id, parent=self)

        self.endpoint_host_name = self.endpoint.host_name
        self.profile_id = self.profile.id
        self.waf_policy_id = self.waf_policy.id
        self.register_outputs({"endpoint_host_name": self.endpoint_host_name, "profile_id": self.profile_id,
                               "waf_policy_id": self.waf_policy_id})
