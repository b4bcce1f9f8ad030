"""Apply-time prerequisites: what AKS and Azure need for the rendered workloads to actually run.

Mocks accept anything, and each of these gaps only shows minutes into `pulumi up` (a pod Pending
forever, ImagePullBackOff, a PVC that never binds, a Service stuck without a load balancer, an origin
to a missing Private Link Service, a ScaledObject nobody acts on, a wait that gives up before the model
loaded). Each stack policy here links the Kubernetes objects to the Azure resources they need.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pulumi_policy import PolicyResource, ReportViolation, ResourceValidationArgs, Severity, StackValidationArgs

from .common import as_list, as_number, is_true, lookup, references, resource_policy, resources_of, same, stack_policy
from .workloads import GPU_RESOURCE, command_line, containers, gpu_quantity, pod_spec, runs_inference_server

AKS = "azure-native:containerservice:ManagedCluster"
AGENT_POOL = "azure-native:containerservice:AgentPool"
REGISTRY = "azure-native:containerregistry:Registry"
ROLE_ASSIGNMENT = "azure-native:authorization:RoleAssignment"
SUBNET = "azure-native:network:Subnet"
VNET = "azure-native:network:VirtualNetwork"
AFD_ORIGIN = "azure-native:cdn:AFDOrigin"
SERVICE = "kubernetes:core/v1:Service"
DAEMON_SET = "kubernetes:apps/v1:DaemonSet"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
PVC = "kubernetes:core/v1:PersistentVolumeClaim"
PV = "kubernetes:core/v1:PersistentVolume"
STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"
SCALED_OBJECT = "kubernetes:keda.sh/v1alpha1:ScaledObject"
TRIGGER_AUTHENTICATION = "kubernetes:keda.sh/v1alpha1:TriggerAuthentication"
AZURE_MONITOR_PROMETHEUS = ".prometheus.monitor.azure.com"

ROLE_ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
ROLE_NETWORK_CONTRIBUTOR = "4d97b98b-1d4f-4787-a291-c67834d212e7"
BLOB_CSI_DRIVER = "blob.csi.azure.com"
ANNOTATION = "service.beta.kubernetes.io/"
PULUMI_TIMEOUT_ANNOTATION = "pulumi.com/timeoutSeconds"
# pulumi-kubernetes waits 10 minutes for a Deployment when neither a custom timeout nor the annotation is set.
DEFAULT_DEPLOYMENT_AWAIT_S = 600
_TAINT = re.compile(r"^(?P<key>[^=:]+)(=(?P<value>[^:]*))?:(?P<effect>\w+)$")


# --- shared helpers ------------------------------------------------------------------------------


def _workloads(resources: Iterable[PolicyResource]) -> list[tuple[PolicyResource, Mapping[str, Any]]]:
    found = []
    for resource in resources:
        spec = pod_spec(resource.resource_type, resource.props)
        if spec is not None:
            found.append((resource, spec))
    return found


def _role_assignments(resources: Sequence[PolicyResource], role_guid: str) -> list[PolicyResource]:
    return [r for r in resources_of(resources, ROLE_ASSIGNMENT)
            if str(r.props.get("roleDefinitionId", "")).lower().endswith(role_guid)]


def _granted_to_cluster(assignment: PolicyResource, clusters: Sequence[PolicyResource]) -> bool:
    """The assignment's principalId was computed from a managed cluster's outputs (its identities)."""
    return any(references(assignment, "principalId", cluster) for cluster in clusters)


def _annotations(resource: PolicyResource) -> Mapping[str, Any]:
    annotations = lookup(resource.props, "metadata.annotations")
    return annotations if isinstance(annotations, Mapping) else {}


# --- AcrPull --------------------------------------------------------------------------------------


def _registry_host(image: str) -> str:
    first = image.split("/", 1)[0]
    return first.lower() if "/" in image and ("." in first or ":" in first) else "docker.io"


def _acr_pull(args: StackValidationArgs, report: ReportViolation) -> None:
    clusters = resources_of(args.resources, AKS)
    if not clusters:
        return
    registries = {f"{str(r.props.get('registryName', '')).lower()}.azurecr.io": r
                  for r in resources_of(args.resources, REGISTRY)}
    grants = [a for a in _role_assignments(args.resources, ROLE_ACR_PULL) if _granted_to_cluster(a, clusters)]
    reported: set[str] = set()
    for workload, spec in _workloads(args.resources):
        for label, container in containers(spec):
            image = container.get("image")
            if not isinstance(image, str):
                continue
            host = _registry_host(image)
            if not host.endswith(".azurecr.io") or (workload.urn, host) in reported:
                continue
            registry = registries.get(host)
            if registry is None:
                report(f"{label} of '{workload.name}' pulls {image!r} from {host}, which is not this stack's "
                       "registry: nothing here grants the AKS kubelet identity AcrPull on it.", workload.urn)
            elif not any(references(a, "scope", registry) for a in grants):
                report(f"{label} of '{workload.name}' pulls from registry '{registry.name}' ({host}), but no "
                       "AcrPull role assignment with that registry as scope is granted to the AKS kubelet "
                       "identity: pods would end in ImagePullBackOff.", workload.urn)
            reported.add((workload.urn, host))


# --- NVIDIA device plugin -------------------------------------------------------------------------


def _is_gpu_pool(pool: PolicyResource) -> bool:
    return bool(pool.props.get("gpuProfile")) or str(pool.props.get("vmSize", "")).startswith("Standard_N")


def _pool_labels(pool: PolicyResource) -> dict[str, str]:
    labels = {str(k): str(v) for k, v in (pool.props.get("nodeLabels") or {}).items()}
    name = str(pool.props.get("agentPoolName", ""))
    return {**labels, "agentpool": name, "kubernetes.azure.com/agentpool": name, "kubernetes.io/os": "linux"}


def _matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator = expression.get("key"), expression.get("operator")
    values = [str(v) for v in as_list(expression.get("values"))]
    if operator == "In":
        return labels.get(key) in values
    if operator == "NotIn":
        return labels.get(key) not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    return False


def _schedulable_on(spec: Mapping[str, Any], labels: Mapping[str, str], taints: Sequence[str]) -> bool:
    """Whether a pod spec may land on nodes with these labels and taints (selector, affinity, tolerations)."""
    selector = spec.get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return False
    terms = as_list(lookup(spec, "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                                 ".nodeSelectorTerms"))
    if terms and not any(all(_matches(e, labels) for e in as_list(t.get("matchExpressions"))) for t in terms):
        return False
    tolerations = as_list(spec.get("tolerations"))
    for taint in taints:
        parsed = _TAINT.match(taint)
        if parsed is None or parsed["effect"] == "PreferNoSchedule":
            continue
        if not any(_tolerates(t, parsed["key"], parsed["value"] or "", parsed["effect"]) for t in tolerations):
            return False
    return True


def _tolerates(toleration: Mapping[str, Any], key: str, value: str, effect: str) -> bool:
    if toleration.get("effect") not in (None, "", effect):
        return False
    if toleration.get("operator") == "Exists":
        return toleration.get("key") in (None, "", key)
    return toleration.get("key") == key and str(toleration.get("value") or "") == value


def _runs_device_plugin(spec: Mapping[str, Any]) -> bool:
    return any("k8s-device-plugin" in str(c.get("image", "")) for _, c in containers(spec, include_init=False))


def _device_plugin(args: StackValidationArgs, report: ReportViolation) -> None:
    gpu_workloads = [w for w, spec in _workloads(args.resources)
                     if any((gpu_quantity(c, "limits") or 0) > 0 for _, c in containers(spec))]
    if not gpu_workloads:
        return
    plugins = [spec for r, spec in _workloads(args.resources)
               if r.resource_type == DAEMON_SET and _runs_device_plugin(spec)]
    for pool in resources_of(args.resources, AGENT_POOL):
        if not _is_gpu_pool(pool):
            continue
        taints = [str(t) for t in as_list(pool.props.get("nodeTaints"))]
        if not any(_schedulable_on(spec, _pool_labels(pool), taints) for spec in plugins):
            names = ", ".join(sorted(w.name for w in gpu_workloads))
            report(f"{names} request {GPU_RESOURCE}, but no NVIDIA device plugin DaemonSet can run on GPU pool "
                   f"'{pool.props.get('agentPoolName')}' (node labels, taints {taints}): the AKS GPU driver alone "
                   f"does not advertise {GPU_RESOURCE}, so the pods stay Pending.", pool.urn)


# --- Blob CSI driver ------------------------------------------------------------------------------


def _blob_volumes(resources: Sequence[PolicyResource]) -> list[PolicyResource]:
    blob_classes = {str(lookup(r.props, "metadata.name")) for r in resources_of(resources, STORAGE_CLASS)
                    if r.props.get("provisioner") == BLOB_CSI_DRIVER}
    found = [r for r in resources_of(resources, STORAGE_CLASS) if r.props.get("provisioner") == BLOB_CSI_DRIVER]
    for claim in resources_of(resources, PVC):
        storage_class = str(lookup(claim.props, "spec.storageClassName") or "")
        if storage_class.startswith("azureblob") or storage_class in blob_classes:
            found.append(claim)
    found += [v for v in resources_of(resources, PV) if lookup(v.props, "spec.csi.driver") == BLOB_CSI_DRIVER]
    return found


def _blob_csi(args: StackValidationArgs, report: ReportViolation) -> None:
    clusters = resources_of(args.resources, AKS)
    if not clusters or any(is_true(lookup(c.props, "storageProfile.blobCSIDriver.enabled")) for c in clusters):
        return
    for volume in _blob_volumes(args.resources):
        report(f"{volume.resource_type.rsplit(':', 1)[-1]} '{volume.name}' uses Azure Blob storage "
               f"({BLOB_CSI_DRIVER}), but no cluster sets storageProfile.blobCSIDriver.enabled=true: the "
               "azureblob-* storage classes do not exist and the claim never binds.", volume.urn)


# --- internal LB + Private Link Service: Network Contributor ---------------------------------------


def _subnet_named(resources: Sequence[PolicyResource], name: str) -> PolicyResource | None:
    for subnet in resources_of(resources, SUBNET):
        if subnet.props.get("subnetName") == name:
            return subnet
    return None


def _node_subnet(resources: Sequence[PolicyResource], clusters: Sequence[PolicyResource]) -> PolicyResource | None:
    for cluster in clusters:
        for pool in as_list(cluster.props.get("agentPoolProfiles")):
            subnet_id = str(pool.get("vnetSubnetID") or "")
            for subnet in resources_of(resources, SUBNET):
                if references(cluster, "agentPoolProfiles", subnet) and subnet_id.lower().endswith(
                        f"/subnets/{str(subnet.props.get('subnetName', '')).lower()}"):
                    return subnet
    return None


def _network_contributor(args: StackValidationArgs, report: ReportViolation) -> None:
    clusters = resources_of(args.resources, AKS)
    if not clusters:
        return
    grants = [a for a in _role_assignments(args.resources, ROLE_NETWORK_CONTRIBUTOR)
              if _granted_to_cluster(a, clusters)]
    vnets = resources_of(args.resources, VNET)
    for service in resources_of(args.resources, SERVICE):
        annotations = _annotations(service)
        if not same(str(annotations.get(f"{ANNOTATION}azure-load-balancer-internal", "")), "true"):
            continue
        needed: dict[str, PolicyResource | None] = {}
        lb_subnet = annotations.get(f"{ANNOTATION}azure-load-balancer-internal-subnet")
        needed[f"internal LB subnet '{lb_subnet or 'node subnet'}'"] = (
            _subnet_named(args.resources, str(lb_subnet)) if lb_subnet else _node_subnet(args.resources, clusters))
        if same(str(annotations.get(f"{ANNOTATION}azure-pls-create", "")), "true"):
            pls_subnet = annotations.get(f"{ANNOTATION}azure-pls-ip-configuration-subnet")
            if pls_subnet:
                needed[f"Private Link Service subnet '{pls_subnet}'"] = _subnet_named(args.resources, str(pls_subnet))
        for what, subnet in needed.items():
            if subnet is None:
                continue  # a subnet outside this stack: its permissions are not visible here
            scopes = [subnet, *[v for v in vnets if references(subnet, "virtualNetworkName", v)]]
            if not any(references(a, "scope", s) for a in grants for s in scopes):
                report(f"Service '{service.name}' makes AKS create objects in the {what}, but the cluster identity "
                       "has no Network Contributor role assignment scoped to it (or its VNet): the load balancer "
                       "or Private Link Service fails with AuthorizationFailed.", service.urn)


# --- Front Door origin after the Service that creates the PLS -------------------------------------


def _origin_after_pls_service(args: StackValidationArgs, report: ReportViolation) -> None:
    makers = {}
    for service in resources_of(args.resources, SERVICE):
        annotations = _annotations(service)
        if same(str(annotations.get(f"{ANNOTATION}azure-pls-create", "")), "true"):
            makers[str(annotations.get(f"{ANNOTATION}azure-pls-name", "")).lower()] = service
    for origin in resources_of(args.resources, AFD_ORIGIN):
        target = str(lookup(origin.props, "sharedPrivateLinkResource.privateLink.id") or "")
        service = makers.get(target.rstrip("/").rsplit("/", 1)[-1].lower()) if target else None
        if service is not None and service not in origin.dependencies:
            report(f"origin '{origin.name}' targets Private Link Service '{target.rsplit('/', 1)[-1]}', which AKS "
                   f"creates for Service '{service.name}', but the origin does not depend on that Service: Front "
                   "Door may be asked for a private link to a PLS that does not exist yet.", origin.urn)


# --- KEDA -----------------------------------------------------------------------------------------


def _keda(args: StackValidationArgs, report: ReportViolation) -> None:
    scaled = resources_of(args.resources, SCALED_OBJECT)
    if not scaled:
        return
    clusters = resources_of(args.resources, AKS)
    keda_on = any(is_true(lookup(c.props, "workloadAutoScalerProfile.keda.enabled")) for c in clusters)
    auth_names = {str(lookup(t.props, "metadata.name")) for t in resources_of(args.resources, TRIGGER_AUTHENTICATION)}
    for scaled_object in scaled:
        if clusters and not keda_on:
            report(f"ScaledObject '{scaled_object.name}' needs the KEDA add-on, but no cluster sets "
                   "workloadAutoScalerProfile.keda.enabled=true: nothing would act on it.", scaled_object.urn)
        for trigger in as_list(lookup(scaled_object.props, "spec.triggers")):
            address = str(lookup(trigger, "metadata.serverAddress") or "")
            if not address.rstrip("/").endswith(AZURE_MONITOR_PROMETHEUS):
                continue  # e.g. an in-cluster Prometheus: authentication is its own business
            ref = lookup(trigger, "authenticationRef.name")
            # Only a full stack shows whether the TriggerAuthentication exists; a lone component shows the ref.
            if ref is None or (clusters and str(ref) not in auth_names):
                report(f"ScaledObject '{scaled_object.name}' queries Azure Monitor ({address}) without an "
                       "authenticationRef to a TriggerAuthentication of this stack: the workspace answers "
                       "unauthenticated queries with 401, so the scaler never gets a value.", scaled_object.urn)


# --- Await timeouts cover the model's startup budget -----------------------------------------------


def _startup_budget_s(container: Mapping[str, Any]) -> float | None:
    probe = container.get("startupProbe")
    if not isinstance(probe, Mapping):
        return None
    period = as_number(probe.get("periodSeconds")) or 10
    threshold = as_number(probe.get("failureThreshold")) or 3
    return (as_number(probe.get("initialDelaySeconds")) or 0) + period * threshold


def _await_covers_startup(args: ResourceValidationArgs, report: ReportViolation) -> None:
    spec = pod_spec(args.resource_type, args.props)
    if spec is None:
        return
    budgets = [b for _, c in containers(spec, include_init=False)
               if runs_inference_server(command_line(c)) and (b := _startup_budget_s(c)) is not None]
    if not budgets:
        return
    budget = max(budgets)
    annotations = lookup(args.props, "metadata.annotations")
    annotation = as_number(_number(annotations.get(PULUMI_TIMEOUT_ANNOTATION))) if isinstance(
        annotations, Mapping) else None
    create = args.opts.custom_timeouts.create_seconds or annotation or DEFAULT_DEPLOYMENT_AWAIT_S
    if create < budget:
        report(f"Pulumi waits {create:.0f}s for this Deployment (custom timeout, else the "
               f"{PULUMI_TIMEOUT_ANNOTATION} annotation, else 600s) but the model may take {budget:.0f}s to "
               "load (startupProbe periodSeconds x failureThreshold): `pulumi up` fails while the pod is healthy.")
    deadline = as_number(lookup(args.props, "spec.progressDeadlineSeconds"))
    if deadline is not None and deadline < budget:
        report(f"spec.progressDeadlineSeconds is {deadline:.0f}s, shorter than the startup budget {budget:.0f}s: "
               "the controller marks a loading rollout as failed.")


def _number(value: Any) -> Any:
    if isinstance(value, str) and value.strip().isdigit():
        return float(value)
    return value


aks_acr_pull_for_images = stack_policy(
    name="aks-acr-pull-for-images",
    description="Every image pulled from an Azure Container Registry comes from this stack's registry, on "
    "which the AKS kubelet identity holds AcrPull.",
    severity=Severity.HIGH,
    remediation="Reference images as <registry login server>/<repository>@<digest> and pass the kubelet "
    "identity to components/registry.py (pull_principal_ids), which grants AcrPull on the registry.",
    check=_acr_pull,
)

aks_gpu_device_plugin = stack_policy(
    name="aks-gpu-device-plugin",
    description="When pods request nvidia.com/gpu, an NVIDIA device plugin DaemonSet can run on every GPU pool "
    "(tolerates its taints, selects its nodes).",
    severity=Severity.HIGH,
    remediation="Deploy components/gpu_device_plugin.py with every GPU pool name and its taints.",
    check=_device_plugin,
)

aks_blob_csi_driver = stack_policy(
    name="aks-blob-csi-driver",
    description="Blob-backed volumes (azureblob-* storage classes, blob.csi.azure.com) have the Blob CSI driver "
    "enabled on the cluster.",
    severity=Severity.HIGH,
    remediation="Set storageProfile.blobCSIDriver.enabled=true on the managed cluster (AksClusterArgs."
    "blob_csi_driver).",
    check=_blob_csi,
)

aks_lb_subnet_network_contributor = stack_policy(
    name="aks-lb-subnet-network-contributor",
    description="The AKS cluster identity holds Network Contributor on the subnets where an internal "
    "LoadBalancer Service makes AKS create its frontend and Private Link Service.",
    severity=Severity.HIGH,
    remediation="Pass those subnet ids as AksClusterArgs.network_contributor_subnet_ids.",
    check=_network_contributor,
)

frontdoor_origin_after_pls_service = stack_policy(
    name="frontdoor-origin-after-pls-service",
    description="A Front Door origin whose private link targets a PLS created by a Kubernetes Service depends "
    "on that Service.",
    severity=Severity.MEDIUM,
    remediation="Pass the Service as FrontDoorArgs.origin_depends_on.",
    check=_origin_after_pls_service,
)

keda_addon_and_authentication = stack_policy(
    name="keda-addon-and-authentication",
    description="A KEDA ScaledObject has the AKS KEDA add-on to act on it and authenticates every trigger "
    "through a TriggerAuthentication of the stack.",
    severity=Severity.HIGH,
    remediation="Enable workloadAutoScalerProfile.keda on the cluster and add a TriggerAuthentication "
    "(podIdentity provider azure-workload) referenced by each trigger, or turn autoscaling off.",
    check=_keda,
)

k8s_await_covers_model_startup = resource_policy(
    name="k8s-await-covers-model-startup",
    description="Pulumi's wait for an inference Deployment (custom timeout or pulumi.com/timeoutSeconds) and "
    "its progressDeadlineSeconds are at least the model's startup budget.",
    severity=Severity.MEDIUM,
    remediation="Set CustomTimeouts (and the pulumi.com/timeoutSeconds annotation) from the startup budget, as "
    "components/inference_service.py does from inference.startupTimeoutSeconds.",
    resource_types=[DEPLOYMENT],
    check=_await_covers_startup,
)

POLICIES = [
    aks_acr_pull_for_images,
    aks_gpu_device_plugin,
    aks_blob_csi_driver,
    aks_lb_subnet_network_contributor,
    frontdoor_origin_after_pls_service,
    keda_addon_and_authentication,
    k8s_await_covers_model_startup,
]
