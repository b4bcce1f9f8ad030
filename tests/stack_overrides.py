"""Stack config overrides that tests share: a stack as it is once its images are in the registry.

The shipped Pulumi.dev.yaml and Pulumi.prod.yaml are the first phase of a new environment
(deployWorkloads: false; the digests only exist after the images are pushed). Tests of the full
platform render them with these overrides: every image pinned by a digest (of a fixed string, not a
real image).
"""

from __future__ import annotations

import hashlib
from typing import Any


def _digest(repository: str) -> str:
    return "sha256:" + hashlib.sha256(repository.encode()).hexdigest()


WITH_WORKLOADS: dict[str, Any] = {
    "deployWorkloads": True,
    "inference": {
        "image": {"digest": _digest("inferforge/inference")},
        "pgvectorJob": {
            "azureCliImage": {"repository": "mirror/azure-cli", "tag": "2.67.0",
                              "digest": _digest("mirror/azure-cli")},
            "postgresClientImage": {"repository": "mirror/postgres", "tag": "16-alpine",
                                    "digest": _digest("mirror/postgres")},
        },
    },
    "aks": {"nvidiaDevicePluginImage": {"digest": _digest("mirror/nvidia/k8s-device-plugin")},
            "imageIntegrity": {"image": {"repository": "mirror/ratify", "tag": "v1.4.0",
                                         "digest": _digest("mirror/ratify")},
                               "crdImage": {"repository": "mirror/ratify-crds", "tag": "v1.4.0",
                                            "digest": _digest("mirror/ratify-crds")}}},
    "gateway": {"image": {"repository": "inferforge/gateway", "tag": "0.1.0", "digest": _digest("inferforge/gateway")}},
}
