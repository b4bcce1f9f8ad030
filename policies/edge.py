"""Edge: Front Door endpoints sit behind a WAF in Prevention mode with managed rule sets."""

from __future__ import annotations

from pulumi_policy import (
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    Severity,
    StackValidationArgs,
)

from .common import (
    as_list,
    config_list,
    links,
    references,
    resource_policy,
    resources_of,
    same,
    stack_policy,
)

PROFILE = "azure-native:cdn:Profile"
ENDPOINT = "azure-native:cdn:AFDEndpoint"
SECURITY_POLICY = "azure-native:cdn:SecurityPolicy"
WAF_POLICY = "azure-native:frontdoor:Policy"
ROUTE = "azure-native:cdn:Route"
FRONT_DOOR_SKUS = {"standard_azurefrontdoor", "premium_azurefrontdoor"}


def _waf_attached(args: StackValidationArgs, report: ReportViolation) -> None:
    security_policies = [
        sp
        for sp in resources_of(args.resources, SECURITY_POLICY)
        if same((sp.props.get("parameters") or {}).get("type"), "WebApplicationFirewall")
    ]
    waf_policies = resources_of(args.resources, WAF_POLICY)
    for sp in security_policies:
        if not any(references(sp, "parameters", waf) for waf in waf_policies):
            report(
                f"security policy '{sp.name}' does not reference a frontdoor.Policy (WAF) of this stack "
                "in parameters.wafPolicy.",
                sp.urn,
            )
    for profile in resources_of(args.resources, PROFILE):
        sku = str((profile.props.get("sku") or {}).get("name", "")).lower()
        if sku not in FRONT_DOOR_SKUS:
            continue
        endpoints = [
            e
            for e in resources_of(args.resources, ENDPOINT)
            if links(e, "profileName", profile, "profileName")
        ]
        guarded = [sp for sp in security_policies if links(sp, "profileName", profile, "profileName")]
        if not guarded:
            report(f"Front Door profile '{profile.name}' has no WAF security policy attached.", profile.urn)
            continue
        for endpoint in endpoints:
            if not any(references(sp, "parameters", endpoint) for sp in guarded):
                report(
                    f"Front Door endpoint '{endpoint.name}' is not among the domains of any WAF "
                    "security policy.",
                    endpoint.urn,
                )


def _waf_prevention(args: ResourceValidationArgs, report: ReportViolation) -> None:
    settings = args.props.get("policySettings") or {}
    mode = settings.get("mode")
    if not same(mode, "Prevention"):
        report(f"policySettings.mode is {mode!r}; it must be 'Prevention' (Detection only logs attacks).")
    state = settings.get("enabledState")
    if not same(state, "Enabled"):
        report(f"policySettings.enabledState is {state!r}; it must be 'Enabled'.")


def _waf_managed_rules(args: ResourceValidationArgs, report: ReportViolation) -> None:
    required = [r for r in config_list(args.get_config(), "requiredRuleSetTypes") if isinstance(r, str)]
    rule_sets = as_list((args.props.get("managedRules") or {}).get("managedRuleSets"))
    present = {str(rs.get("ruleSetType", "")).lower() for rs in rule_sets}
    missing = [r for r in required if r.lower() not in present]
    if missing:
        report(f"managedRules.managedRuleSets lacks {', '.join(missing)}.")
    sku = (args.props.get("sku") or {}).get("name")
    if rule_sets and not same(sku, "Premium_AzureFrontDoor"):
        report(f"sku.name is {sku!r}; managed rule sets are only enforced with 'Premium_AzureFrontDoor'.")


def _pattern_matches(pattern: str, path: str) -> bool:
    """Front Door route matching: exact path, or a trailing `*` matching any rest of the path."""
    pattern = pattern.lower()
    if pattern.endswith("*"):
        return path.lower().startswith(pattern[:-1])
    return path.lower() == pattern


def _route_api_only(args: ResourceValidationArgs, report: ReportViolation) -> None:
    private = [p for p in config_list(args.get_config(), "privatePaths") if isinstance(p, str)]
    patterns = [p for p in as_list(args.props.get("patternsToMatch")) if isinstance(p, str)]
    if not patterns:
        report("patternsToMatch is empty; Front Door then matches every path ('/*'). List the API paths, "
               "e.g. ['/v1/*'].")
    for pattern in patterns:
        if pattern in ("/*", "*"):
            report(f"patternsToMatch has {pattern!r}: every path of the origin is public, including the "
                   f"unauthenticated {', '.join(private)}.")
            continue
        exposed = [path for path in private if _pattern_matches(pattern, path)]
        if exposed:
            report(f"patternsToMatch has {pattern!r}, which publishes {', '.join(exposed)}.")


frontdoor_waf_attached = stack_policy(
    name="frontdoor-waf-attached",
    description="Every Front Door (Standard/Premium) profile has a WAF security policy that references "
    "a WAF policy and covers all of its endpoints.",
    severity=Severity.CRITICAL,
    remediation="Create a cdn.SecurityPolicy of type WebApplicationFirewall on the profile with "
    "wafPolicy.id = the frontdoor.Policy's id and every endpoint's id in associations[].domains.",
    check=_waf_attached,
)

frontdoor_waf_prevention_mode = resource_policy(
    name="frontdoor-waf-prevention-mode",
    description="Front Door WAF policies are enabled and in Prevention mode, so matched attacks are "
    "blocked, not only logged.",
    severity=Severity.HIGH,
    remediation="Set policySettings.mode='Prevention' and policySettings.enabledState='Enabled' on the "
    "frontdoor.Policy (dev may run Detection while tuning).",
    resource_types=[WAF_POLICY],
    check=_waf_prevention,
)

frontdoor_waf_managed_rules = resource_policy(
    name="frontdoor-waf-managed-rules",
    description="Front Door WAF policies include the managed default and bot-protection rule sets "
    "(Premium SKU).",
    severity=Severity.HIGH,
    remediation="Add managedRules.managedRuleSets for Microsoft_DefaultRuleSet and "
    "Microsoft_BotManagerRuleSet, with sku Premium_AzureFrontDoor.",
    resource_types=[WAF_POLICY],
    check=_waf_managed_rules,
    config_schema=PolicyConfigSchema(
        properties={
            "requiredRuleSetTypes": {
                "type": "array",
                "items": {"type": "string"},
                "default": ["Microsoft_DefaultRuleSet", "Microsoft_BotManagerRuleSet"],
                "description": "Managed rule set types every WAF policy must include.",
            }
        }
    ),
)

frontdoor_route_api_only = resource_policy(
    name="frontdoor-route-api-only",
    description="Front Door routes forward only the API paths, never '/*': the inference server's "
    "unauthenticated /metrics (and probe paths) stay off the public endpoint. Health probes reach the "
    "origin directly, without a route.",
    severity=Severity.HIGH,
    remediation="Set the cdn.Route's patternsToMatch to the API paths only (FrontDoorArgs.route_patterns, "
    "default ['/v1/*']); scrape /metrics in-cluster.",
    resource_types=[ROUTE],
    check=_route_api_only,
    config_schema=PolicyConfigSchema(
        properties={
            "privatePaths": {
                "type": "array",
                "items": {"type": "string", "pattern": "^/"},
                "default": ["/metrics", "/health", "/ready"],
                "description": "Origin paths no route may publish (unauthenticated on the inference server).",
            }
        }
    ),
)

POLICIES = [frontdoor_waf_attached, frontdoor_waf_prevention_mode, frontdoor_waf_managed_rules,
            frontdoor_route_api_only]
