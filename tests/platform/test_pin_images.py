"""The release workflow pins promoted digests into a stack file without touching anything else in it."""

from __future__ import annotations

import shutil

import pytest
import yaml
from inferforge.stacks.pin_images import main, pin_digest
from inferforge.stacks.render import REPO_ROOT, validate_stack

SERVER = "sha256:" + "1a" * 32
GATEWAY = "sha256:" + "2b" * 32
CLI = "sha256:" + "3c" * 32


def test_pinning_adds_digests_beside_the_repository_and_keeps_every_comment(tmp_path):
    shutil.copy(REPO_ROOT / "Pulumi.test.yaml", tmp_path / "Pulumi.test.yaml")
    before = (tmp_path / "Pulumi.test.yaml").read_text()

    assert main(["--stack", "test", f"inference.image={SERVER}", f"gateway.image={GATEWAY}",
                 f"inference.pgvectorJob.azureCliImage={CLI}"], root=tmp_path) == 0

    after = (tmp_path / "Pulumi.test.yaml").read_text()
    assert [line for line in before.splitlines() if line.lstrip().startswith("#")] == \
           [line for line in after.splitlines() if line.lstrip().startswith("#")]
    cfg = validate_stack("test", root=tmp_path)
    assert cfg.inference.image.digest == SERVER and cfg.inference.image.tag == "0.1.0"
    assert cfg.inference.pgvector_job.azure_cli_image.digest == CLI  # a flow-style section
    assert cfg.gateway.image.digest == GATEWAY
    assert len(after.splitlines()) == len(before.splitlines()) + 2


def test_pinning_again_replaces_the_digest_in_place():
    text = "config:\n  inferforge:gateway:\n    image:\n      repository: inferforge/gateway\n      digest: x # keep\n"
    pinned = pin_digest(text, "gateway.image", GATEWAY)
    assert pinned.endswith(f"digest: {GATEWAY} # keep\n")
    assert yaml.safe_load(pinned)["config"]["inferforge:gateway"]["image"]["digest"] == GATEWAY


@pytest.mark.parametrize(("key", "digest", "message"), [
    ("inference.image", "sha256:abc", "inference.image: 'sha256:abc' is not a digest"),
    ("models[0].image", SERVER, "inferforge:models[0].image: no such image section in the stack file"),
])
def test_a_bad_pin_names_the_key_and_leaves_the_file_alone(tmp_path, capsys, key, digest, message):
    shutil.copy(REPO_ROOT / "Pulumi.test.yaml", tmp_path / "Pulumi.test.yaml")
    before = (tmp_path / "Pulumi.test.yaml").read_text()
    assert main(["--stack", "test", f"{key}={digest}"], root=tmp_path) == 2
    assert message in capsys.readouterr().err
    assert (tmp_path / "Pulumi.test.yaml").read_text() == before
