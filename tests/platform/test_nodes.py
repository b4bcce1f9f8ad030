"""Node hardening (issue 15.2): encryption at host and ephemeral OS disks that fit the VM's temp disk."""

from __future__ import annotations

import pytest
from inferforge.components.gpu_sizes import GPU_VM_SIZES
from inferforge.components.vm_local_disks import TEMP_DISK_GIB
from inferforge.stacks.config import ConfigError
from inferforge.stacks.render import validate_stack

from tests.platform.conftest import one

AKS = "azure-native:containerservice:ManagedCluster"
POOL = "azure-native:containerservice:AgentPool"


def problems(overrides: dict, stack: str = "dev") -> str:
    with pytest.raises(ConfigError) as caught:
        validate_stack(stack, overrides)
    return "\n".join(caught.value.problems)


def gpu_pool(**fields) -> dict:
    return {"aks": {"gpuPools": [{"name": "gpua100", "vmSize": "Standard_NC24ads_A100_v4", "minCount": 0,
                                  "maxCount": 2, **fields}]}}


@pytest.mark.parametrize(("stack", "system_disk"), [("dev", 128), ("prod", 128)])
def test_system_pool_encrypts_at_host_on_an_ephemeral_os_disk(stack, system_disk, request):
    (system,) = one(request.getfixturevalue(stack), AKS).inputs["agentPoolProfiles"]
    assert system["enableEncryptionAtHost"] is True
    assert (system["osDiskType"], system["osDiskSizeGB"]) == ("Ephemeral", system_disk)


def test_gpu_pools_encrypt_at_host_with_an_ephemeral_disk_sized_to_the_temp_disk(dev, prod):
    # dev: NC24ads_A100_v4 has a 64 GiB temp disk, so the 256 GB default shrinks to 64; prod H100 keeps 256.
    for resources, size in ((dev, 64), (prod, 256)):
        pool = one(resources, POOL).inputs
        assert pool["enableEncryptionAtHost"] is True
        assert (pool["osDiskType"], pool["osDiskSizeGB"]) == ("Ephemeral", size)


def test_every_gpu_size_has_a_known_temp_disk():
    assert set(GPU_VM_SIZES) <= set(TEMP_DISK_GIB)


def test_os_disk_larger_than_the_temp_disk_is_rejected_naming_the_numbers():
    text = problems(gpu_pool(osDiskSizeGb=256))
    assert ("inferforge:aks.gpuPools[0].osDiskSizeGb: 256 does not fit the 64 GiB temp disk of "
            "Standard_NC24ads_A100_v4 that holds an ephemeral OS disk; allowed: 30-64, or osDiskType Managed") in text


def test_a_managed_os_disk_may_be_any_size():
    cfg = validate_stack("dev", gpu_pool(osDiskSizeGb=256, osDiskType="Managed"))
    assert cfg.aks.gpu_pools[0].effective_os_disk_size_gb == 256


def test_system_pool_disk_is_checked_against_its_size():
    text = problems({"aks": {"systemVmSize": "Standard_D2ds_v5", "systemOsDiskSizeGb": 100}})
    assert "inferforge:aks.systemOsDiskSizeGb: 100 does not fit the 75 GiB temp disk of Standard_D2ds_v5" in text
    unknown = problems({"aks": {"systemVmSize": "Standard_D4s_v5"}})
    assert ("inferforge:aks.systemOsDiskType: Ephemeral cannot be checked on Standard_D4s_v5 (its temp disk size "
            "is not known)") in unknown
    assert validate_stack("dev", {"aks": {"systemVmSize": "Standard_D4s_v5", "systemOsDiskType": "Managed"}})
