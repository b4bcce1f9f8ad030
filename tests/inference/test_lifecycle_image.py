"""inference/Dockerfile, checked statically (no Docker engine here): pinned base image and packages
equal to requirements-serve.txt, non-root fixed UID, read-only-root-friendly environment, the entrypoint."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "inference" / "Dockerfile").read_text()
INSTRUCTIONS = [line for line in DOCKERFILE.splitlines() if line and not line.startswith(("#", " "))]


def requirement_pins() -> dict[str, str]:
    """name -> version of every `name==version` line of requirements-serve.txt (the `serve` extra)."""
    text = (REPO / "requirements-serve.txt").read_text()
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", text, flags=re.M))


def dockerfile_pins() -> dict[str, str]:
    return dict(re.findall(r"\b([a-z][a-z0-9_.-]*)==([0-9][^\s\\\"]*)", DOCKERFILE))


def test_every_pinned_inference_requirement_has_the_same_pin_in_the_image() -> None:
    required, pinned = requirement_pins(), dockerfile_pins()
    assert required, "no pins found in requirements-serve.txt"
    mismatched = {name: (version, pinned.get(name)) for name, version in required.items()
                  if pinned.get(name) != version}
    assert not mismatched, f"requirements-serve.txt vs Dockerfile: {mismatched}"


def test_every_package_in_the_image_is_pinned_exactly() -> None:
    install_lines = re.findall(r"pip install[^\n]*(?:\\\n[^\n]*)*", DOCKERFILE)
    packages = [tok for line in install_lines for tok in line.replace("\\\n", " ").split()
                if re.match(r"^[a-z][a-z0-9_.-]*(==|>=|<|~=|$)", tok) and tok not in ("pip", "install")]
    assert packages and all("==" in p for p in packages), packages


def test_base_images_are_pinned_by_tag_never_latest() -> None:
    images = re.findall(r"^ARG CUDA_IMAGE=(\S+)", DOCKERFILE, flags=re.M)
    images += re.findall(r"COPY --from=(\S+/\S+)", DOCKERFILE)
    assert images
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", image
    assert images[0].startswith("nvidia/cuda:") and "runtime" in images[0]


def test_runs_as_the_fixed_non_root_uid() -> None:
    users = [line for line in INSTRUCTIONS if line.startswith("USER ")]
    assert users == ["USER 10001:10001"]
    assert "--uid 10001" in DOCKERFILE


@pytest.mark.parametrize(("variable", "value"), [
    ("HOME", "/tmp"), ("HF_HOME", "/cache/huggingface"), ("XDG_CACHE_HOME", "/cache"),
    ("TORCH_EXTENSIONS_DIR", "/cache/torch_extensions"), ("TRITON_CACHE_DIR", "/cache/triton"),
    ("PYTHONDONTWRITEBYTECODE", "1"), ("HF_HUB_OFFLINE", "1"),
])
def test_writable_paths_are_only_tmp_and_cache(variable: str, value: str) -> None:
    assert re.search(rf"\b{variable}={re.escape(value)}\b", DOCKERFILE)


def test_exposes_8000_and_enters_the_serve_command() -> None:
    assert "EXPOSE 8000" in INSTRUCTIONS
    entrypoint = next(line for line in INSTRUCTIONS if line.startswith("ENTRYPOINT"))
    assert entrypoint.endswith('"python", "-m", "inference", "serve"]')
    assert '"--host", "0.0.0.0"' in next(line for line in INSTRUCTIONS if line.startswith("CMD"))
