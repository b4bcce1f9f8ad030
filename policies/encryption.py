"""Encryption in transit: TLS 1.2 or newer, TLS-only Redis, HTTPS-only edge, secure PostgreSQL."""

from __future__ import annotations

import re

from pulumi_policy import (
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    Severity,
    StackValidationArgs,
)

from .common import (
    AZURE_PREFIX,
    as_list,
    links,
    lookup,
    references,
    require_value,
    resource_policy,
    resources_of,
    same,
    stack_policy,
    walk,
)

REDIS_DATABASE = "azure-native:redisenterprise:Database"
ROUTE = "azure-native:cdn:Route"
ORIGIN_GROUP = "azure-native:cdn:AFDOriginGroup"
ORIGIN = "azure-native:cdn:AFDOrigin"
POSTGRES = "azure-native:dbforpostgresql:Server"
POSTGRES_CONFIGURATION = "azure-native:dbforpostgresql:Configuration"

# Property names Azure uses for a minimum TLS version (they differ between services).
_TLS_KEYS = {"minimumtlsversion", "minimaltlsversion", "mintlsversion"}
# PostgreSQL carries its minimum as a server parameter rather than a property.
_POSTGRES_TLS_PARAMETER = "ssl_min_protocol_version"
# "1.2", "TLS1_2", "TLS12", "Tls12", "TLSv1.2", "1.3": the digits after the major version 1.
_TLS_VERSION = re.compile(r"^(?:tls)?v?_?1[._]?(\d)$")


def _tls_minor(value: str) -> int | None:
    match = _TLS_VERSION.match(value.strip().lower())
    return int(match.group(1)) if match else None


def _minimum_tls(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not args.resource_type.startswith(AZURE_PREFIX):
        return
    minimum = str(args.get_config().get("minimumVersion", "1.2"))
    required_minor = _tls_minor(minimum) or 2
    settings: list[tuple[str, object]] = []
    if args.resource_type == POSTGRES_CONFIGURATION:
        if same(args.props.get("configurationName"), _POSTGRES_TLS_PARAMETER):
            settings.append(("value", args.props.get("value")))
    else:
        for path, key, value in walk(args.props):
            if key.lower() in _TLS_KEYS:
                settings.append((".".join((*path, key)), value))
    for where, value in settings:
        minor = _tls_minor(value) if isinstance(value, str) else None
        if minor is None or minor < required_minor:
            report(f"{where} is {value!r}; TLS {minimum} or newer is required.")



def _route_https_only(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = args.props
    protocols = [p for p in as_list(props.get("supportedProtocols")) if isinstance(p, str)]
    redirect = props.get("httpsRedirect")
    if not same(redirect, "Enabled"):
        report(f"httpsRedirect is {redirect!r}; it must be 'Enabled' so HTTP requests are redirected.")
    if not any(same(p, "Https") for p in protocols):
        report(f"supportedProtocols is {protocols}; it must include 'Https'.")
    for protocol in protocols:
        if not same(protocol, "Https") and not (same(protocol, "Http") and same(redirect, "Enabled")):
            report(f"supportedProtocols includes {protocol!r} without an HTTPS redirect; serve 'Https' only.")


def _origin_tls_or_private_link(args: StackValidationArgs, report: ReportViolation) -> None:
    # HTTP from Front Door to an origin is acceptable only when it never leaves Microsoft's network:
    # every origin of the route's group is reached through a Private Link (sharedPrivateLinkResource).
    groups = resources_of(args.resources, ORIGIN_GROUP)
    origins = resources_of(args.resources, ORIGIN)
    for route in resources_of(args.resources, ROUTE):
        forwarding = route.props.get("forwardingProtocol")
        if same(forwarding, "HttpsOnly"):
            continue
        targets = [g for g in groups if references(route, "originGroup", g)]
        members = [o for g in targets for o in origins if links(o, "originGroupName", g, "originGroupName")]
        public = [o.name for o in members if not lookup(o.props, "sharedPrivateLinkResource.privateLink.id")]
        if not members or public:
            where = f"public origins {public}" if public else "origins that cannot be resolved"
            report(f"forwardingProtocol is {forwarding!r} and the route's origin group has {where}; "
                   "HTTP to an origin is only allowed over Private Link, otherwise use 'HttpsOnly'.", route.urn)


def _postgres_secure_transport(args: StackValidationArgs, report: ReportViolation) -> None:
    configurations = [
        c
        for c in resources_of(args.resources, POSTGRES_CONFIGURATION)
        if same(c.props.get("configurationName"), "require_secure_transport")
    ]
    for configuration in configurations:
        value = configuration.props.get("value")
        if not same(value, "ON"):
            report(f"require_secure_transport is {value!r}; it must be 'ON'.", configuration.urn)
    for server in resources_of(args.resources, POSTGRES):
        if not any(links(c, "serverName", server, "serverName") for c in configurations):
            report(
                f"PostgreSQL server '{server.name}' has no require_secure_transport configuration set "
                "explicitly to 'ON'.",
                server.urn,
            )


azure_minimum_tls_version = resource_policy(
    name="azure-minimum-tls-version",
    description="Every Azure resource that has a minimum TLS version setting (minimumTlsVersion, "
    "Front Door domain TLS settings, PostgreSQL ssl_min_protocol_version) requires TLS 1.2 or newer.",
    severity=Severity.HIGH,
    remediation="Set the resource's minimum TLS version to 1.2 (spelled '1.2', 'TLS1_2' or 'TLS12' "
    "depending on the service); for PostgreSQL set ssl_min_protocol_version to 'TLSv1.2'.",
    resource_types=None,
    check=_minimum_tls,
    config_schema=PolicyConfigSchema(
        properties={
            "minimumVersion": {
                "type": "string",
                "enum": ["1.2", "1.3"],
                "default": "1.2",
                "description": "Lowest TLS version a resource may accept.",
            }
        }
    ),
)

redis_tls_only = resource_policy(
    name="redis-tls-only",
    description="Azure Managed Redis databases accept TLS connections only (clientProtocol Encrypted).",
    severity=Severity.HIGH,
    remediation="Set clientProtocol='Encrypted' on the redisenterprise database (TLS on port 10000).",
    resource_types=[REDIS_DATABASE],
    check=require_value("clientProtocol", "Encrypted", "TLS only, no plaintext port"),
)

frontdoor_route_https_only = resource_policy(
    name="frontdoor-route-https-only",
    description="Front Door routes serve clients over HTTPS only: HTTP is accepted solely to be redirected "
    "to HTTPS.",
    severity=Severity.HIGH,
    remediation="On the cdn.Route set httpsRedirect='Enabled' and supportedProtocols=['Https'] (or "
    "['Http','Https'] so the redirect can answer HTTP).",
    resource_types=[ROUTE],
    check=_route_https_only,
)

frontdoor_origin_tls_or_private_link = stack_policy(
    name="frontdoor-origin-tls-or-private-link",
    description="Front Door reaches each origin either over HTTPS (forwardingProtocol HttpsOnly) or, when it "
    "forwards plain HTTP, only through Private Link, so origin traffic never crosses the public internet "
    "unencrypted.",
    severity=Severity.HIGH,
    remediation="Set the route's forwardingProtocol='HttpsOnly' (origin serves TLS with a publicly trusted "
    "certificate), or give every origin of its group a sharedPrivateLinkResource (Private Link Service).",
    check=_origin_tls_or_private_link,
)

postgres_require_secure_transport = stack_policy(
    name="postgres-require-secure-transport",
    description="Every PostgreSQL flexible server sets the require_secure_transport parameter to ON "
    "explicitly, so unencrypted connections are refused.",
    severity=Severity.HIGH,
    remediation="Add a dbforpostgresql.Configuration 'require_secure_transport' = 'ON' for the server "
    "(chained with depends_on after the other server parameters).",
    check=_postgres_secure_transport,
)

POLICIES = [
    azure_minimum_tls_version,
    redis_tls_only,
    frontdoor_route_https_only,
    frontdoor_origin_tls_or_private_link,
    postgres_require_secure_transport,
]
