"""Azure GPU VM sizes AKS can run, with their GPU count (the facts tensor-parallel sizing needs).

Sources: Azure VM size documentation for the NC/ND/NV families. A size missing here is rejected
by config validation rather than guessed; add it with its GPU count and model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSize:
    gpus: int
    gpu_model: str


GPU_VM_SIZES: dict[str, GpuSize] = {
    "Standard_NC4as_T4_v3": GpuSize(1, "T4"),
    "Standard_NC8as_T4_v3": GpuSize(1, "T4"),
    "Standard_NC16as_T4_v3": GpuSize(1, "T4"),
    "Standard_NC64as_T4_v3": GpuSize(4, "T4"),
    "Standard_NV36ads_A10_v5": GpuSize(1, "A10"),
    "Standard_NV72ads_A10_v5": GpuSize(2, "A10"),
    "Standard_NC24ads_A100_v4": GpuSize(1, "A100-80GB"),
    "Standard_NC48ads_A100_v4": GpuSize(2, "A100-80GB"),
    "Standard_NC96ads_A100_v4": GpuSize(4, "A100-80GB"),
    "Standard_ND96asr_v4": GpuSize(8, "A100-40GB"),
    "Standard_ND96amsr_A100_v4": GpuSize(8, "A100-80GB"),
    "Standard_NC40ads_H100_v5": GpuSize(1, "H100-NVL"),
    "Standard_NC80adis_H100_v5": GpuSize(2, "H100-NVL"),
    "Standard_ND96isr_H100_v5": GpuSize(8, "H100-80GB"),
    "Standard_ND96isr_H200_v5": GpuSize(8, "H200-141GB"),
}


def allowed_tp_sizes(vm_size: str) -> list[int]:
    """Tensor-parallel sizes one pod can use on this VM: powers of two that divide its GPU count."""
    gpus = GPU_VM_SIZES[vm_size].gpus
    return [tp for tp in (1, 2, 4, 8) if tp <= gpus and gpus % tp == 0]
