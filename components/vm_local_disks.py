"""Local (temp/resource) disk size of the VM sizes AKS pools use here: what decides whether an ephemeral OS disk fits.

An ephemeral OS disk lives on the VM's local storage, so ``osDiskSizeGB`` must not exceed the space of its
placement: the cache disk (CacheDisk placement) or the temp/resource disk (ResourceDisk placement); the
platform places it on the cache disk when the size has one, otherwise on the resource disk
(https://learn.microsoft.com/azure/virtual-machines/ephemeral-os-disks#size-requirements). None of the sizes
below lists a cache disk, so the resource (temp) disk is the limit.

Temp disk sizes in GiB, from the size pages of https://learn.microsoft.com/azure/virtual-machines/sizes/
(gpu-accelerated: NCasT4_v3, NVadsA10_v5, NC_A100_v4, NDasrA100_v4, NDm_A100_v4, NCads_H100_v5,
ND-H100-v5, ND-H200-v5; general-purpose: Ddsv5). A size missing here cannot be checked, so config
rejects an ephemeral OS disk on it rather than guess.
"""

from __future__ import annotations

TEMP_DISK_GIB: dict[str, int] = {
    # GPU sizes (components/gpu_sizes.py)
    "Standard_NC4as_T4_v3": 176,
    "Standard_NC8as_T4_v3": 352,
    "Standard_NC16as_T4_v3": 352,
    "Standard_NC64as_T4_v3": 2816,
    "Standard_NV36ads_A10_v5": 1440,
    "Standard_NV72ads_A10_v5": 2880,
    "Standard_NC24ads_A100_v4": 64,
    "Standard_NC48ads_A100_v4": 128,
    "Standard_NC96ads_A100_v4": 256,
    "Standard_ND96asr_v4": 6000,
    "Standard_ND96amsr_A100_v4": 6400,
    "Standard_NC40ads_H100_v5": 3576,
    "Standard_NC80adis_H100_v5": 7152,
    "Standard_ND96isr_H100_v5": 1024,
    "Standard_ND96isr_H200_v5": 1024,
    # System pool sizes (Ddsv5: the "d" means a local temp disk)
    "Standard_D2ds_v5": 75,
    "Standard_D4ds_v5": 150,
    "Standard_D8ds_v5": 300,
    "Standard_D16ds_v5": 600,
    "Standard_D32ds_v5": 1200,
    "Standard_D48ds_v5": 1800,
    "Standard_D64ds_v5": 2400,
    "Standard_D96ds_v5": 3600,
}

MIN_OS_DISK_GB = 30
"""Smallest OS disk AKS accepts."""
SYSTEM_OS_DISK_GB = 128
"""System pool OS disk when not configured: room for images of the add-ons, capped by the temp disk."""
GPU_OS_DISK_GB = 256
"""GPU pool OS disk when not configured: room for the CUDA-sized server image, capped by the temp disk."""


def default_ephemeral_os_disk_gb(vm_size: str, preferred: int) -> int:
    """The preferred OS disk size, shrunk to the VM's temp disk so an ephemeral OS disk fits."""
    return min(preferred, TEMP_DISK_GIB[vm_size])


def ephemeral_os_disk_problem(vm_size: str, os_disk_size_gb: int, *, size_key: str = "osDiskSizeGb",
                              type_key: str = "osDiskType") -> str | None:
    """Why an ephemeral OS disk of this size cannot be placed on this VM size (None when it fits).

    The message starts with the config key it is about (``size_key`` or ``type_key``).
    """
    temp = TEMP_DISK_GIB.get(vm_size)
    if temp is None:
        return (f"{type_key} Ephemeral cannot be checked on {vm_size} (its temp disk size is not known); allowed: "
                f"{type_key} Managed, or a VM size listed in components/vm_local_disks.py")
    if os_disk_size_gb > temp:
        return (f"{size_key} {os_disk_size_gb} does not fit the {temp} GiB temp disk of {vm_size} that holds an "
                f"ephemeral OS disk; allowed: {MIN_OS_DISK_GB}-{temp}, or {type_key} Managed")
    return None
