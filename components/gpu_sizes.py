"""Azure GPU VM sizes AKS can run, with their GPU count and memory per GPU (what TP and memory sizing need).

Sources: Azure VM size documentation for the NC/ND/NV families
(https://learn.microsoft.com/azure/virtual-machines/sizes/overview#gpu-accelerated); GPU memory is the
vendor's nominal capacity per GPU in GB (10^9 bytes), which is at or below what the driver reports:
T4 16 GB, A10 24 GB, A100 40/80 GB, H100 SXM 80 GB, H100 NVL 94 GB (NC H100 v5,
https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/nch100v5-series), H200 141 GB.
A size missing here is rejected by config validation rather than guessed; add it with its GPU count,
model and memory.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSize:
    gpus: int
    gpu_model: str
    memory_gb: int
    """Memory of one GPU, nominal GB (10^9 bytes)."""

    @property
    def memory_bytes(self) -> int:
        return self.memory_gb * 10**9


GPU_VM_SIZES: dict[str, GpuSize] = {
    "Standard_NC4as_T4_v3": GpuSize(1, "T4", 16),
    "Standard_NC8as_T4_v3": GpuSize(1, "T4", 16),
    "Standard_NC16as_T4_v3": GpuSize(1, "T4", 16),
    "Standard_NC64as_T4_v3": GpuSize(4, "T4", 16),
    "Standard_NV36ads_A10_v5": GpuSize(1, "A10", 24),
    "Standard_NV72ads_A10_v5": GpuSize(2, "A10", 24),
    "Standard_NC24ads_A100_v4": GpuSize(1, "A100-80GB", 80),
    "Standard_NC48ads_A100_v4": GpuSize(2, "A100-80GB", 80),
    "Standard_NC96ads_A100_v4": GpuSize(4, "A100-80GB", 80),
    "Standard_ND96asr_v4": GpuSize(8, "A100-40GB", 40),
    "Standard_ND96amsr_A100_v4": GpuSize(8, "A100-80GB", 80),
    "Standard_NC40ads_H100_v5": GpuSize(1, "H100-NVL", 94),
    "Standard_NC80adis_H100_v5": GpuSize(2, "H100-NVL", 94),
    "Standard_ND96isr_H100_v5": GpuSize(8, "H100-80GB", 80),
    "Standard_ND96isr_H200_v5": GpuSize(8, "H200-141GB", 141),
}


def allowed_tp_sizes(vm_size: str) -> list[int]:
    """Tensor-parallel sizes one pod can use on this VM: powers of two that divide its GPU count."""
    gpus = GPU_VM_SIZES[vm_size].gpus
    return [tp for tp in (1, 2, 4, 8) if tp <= gpus and gpus % tp == 0]
