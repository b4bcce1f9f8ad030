"""The installable distribution, as a user gets it: the wheel built from this checkout, installed with its
`platform` extra into a fresh virtualenv, used by a consumer Pulumi program that lives outside the repository.

The wheel is built from a copy of the files git would ship (tracked and untracked, not ignored), as
`pip install git+<repo>` builds from a clone; the fresh venv sees neither the checkout nor the repo's .venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"components": "components", "stacks": "stacks", "policies": "policies", "inference": "inference",
            "gateway": "gateway"}
GENERIC_NAMES = tuple(PACKAGES)
DATA_FILES = {"inferforge/policies/PulumiPolicy.yaml", "inferforge/policies/README.md",
              "inferforge/policies/requirements.txt", "inferforge/policies/config/dev.json",
              "inferforge/policies/config/prod.json", "inferforge/policies/prices.json"}
SCRIPTS = ("inferforge-plan", "inferforge-policies", "inferforge-serve", "inferforge-gateway")

pytestmark = pytest.mark.slow


def _shipped_files(destination: Path) -> None:
    """Copy what a clone holds (plus untracked, non-ignored work) to `destination`: no .venv, build output."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the work tree is not shipped
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def _clean_env() -> dict[str, str]:
    """The environment of a user's shell: nothing that points Python at this checkout or its venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PULUMI_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source, dist = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    _shipped_files(source)
    # Build isolation as a user's `pip install` does: the build backend comes from pyproject's [build-system].
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(source)],
                   check=True, env=_clean_env(), timeout=600, capture_output=True)
    (built,) = dist.glob("inferforge-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory) -> Path:
    """A fresh venv with `inferforge[platform]` installed from the wheel; returns its python."""
    target = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False, clear=True).create(target)
    python = target / "bin" / "python"
    started = time.monotonic()
    # The repo venv's pip installs into the fresh venv (--python), so the new one needs no ensurepip.
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                             f"{wheel}[platform]"], env=_clean_env(), timeout=900, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    print(f"\ninstalled inferforge[platform] into a fresh venv in {time.monotonic() - started:.0f} s")
    return python


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A working directory outside the repository (and not under it)."""
    assert REPO not in tmp_path.resolve().parents
    return tmp_path


def _run(args: list[str | Path], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                          timeout=timeout)


# --- the wheel ------------------------------------------------------------------------------------


def test_the_wheel_holds_every_module_of_the_four_packages_under_inferforge(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(path.relative_to(REPO)) for path in (REPO / "inferforge").glob("*.py")}
    for package, folder in PACKAGES.items():
        expected |= {f"inferforge/{package}/{path.relative_to(REPO / folder)}"
                     for path in (REPO / folder).rglob("*.py") if "__pycache__" not in path.parts
                     and "venv" not in path.relative_to(REPO / folder).parts}
    assert expected - names == set(), "modules missing from the wheel"
    assert {n for n in names if n.endswith(".py")} - expected == set(), "modules in the wheel but not in the checkout"
    assert DATA_FILES <= names, "run-time data files missing from the wheel"


def test_the_wheel_has_one_top_level_name_and_no_tests(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/", 1)[0] for n in names} == {"inferforge", f"{wheel.name.split('-py3')[0]}.dist-info"}
    assert not [n for n in names if "/tests/" in n or n.startswith("tests/") or "/conftest" in n]


def test_the_wheel_declares_the_extras_from_the_pin_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode()
        entry_points = archive.read(metadata_name.replace("METADATA", "entry_points.txt")).decode()
    requires = [line.removeprefix("Requires-Dist: ") for line in metadata.splitlines()
                if line.startswith("Requires-Dist: ")]
    for extra in ("platform", "serve", "gateway", "dev"):
        pins = [line.strip() for line in (REPO / f"requirements-{extra}.txt").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
        assert pins, f"requirements-{extra}.txt pins nothing"
        assert sorted(r.split(";")[0].strip() for r in requires if f'extra == "{extra}"' in r) == sorted(pins)
    assert all("extra ==" in r for r in requires), "no base dependencies: import inferforge needs none"
    for script in SCRIPTS:
        assert f"{script} = inferforge.console:" in entry_points


# --- installed in a fresh venv, used from outside the repository --------------------------------------


def test_installed_inferforge_is_the_venvs_copy_and_the_checkout_trick_stays_inert(installed: Path,
                                                                                   outside: Path) -> None:
    probe = textwrap.dedent("""
        import importlib.util, json, sys
        import inferforge, inferforge.components.network, inferforge.stacks.render
        print(json.dumps({
            "path": list(inferforge.__path__),
            "network": inferforge.components.network.__file__,
            "generic": [n for n in sys.argv[1:] if importlib.util.find_spec(n) is not None],
            "prefix": sys.prefix,
        }))
    """)
    result = _run([installed, "-c", probe, *GENERIC_NAMES], cwd=outside)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    site_packages = Path(found["network"]).parents[2]
    assert found["path"] == [str(site_packages / "inferforge")], "only the installed package, no checkout on __path__"
    assert Path(found["prefix"]) in site_packages.parents and REPO not in site_packages.parents
    assert found["generic"] == [], "nothing generic may be importable at the top of site-packages"


def readme_consumer_program() -> str:
    """The README's minimal consumer program (the first python block of "Use as a library"): the test runs it."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Use as a library"):]
    section = section[:section.index("\n## ", 1)]
    return section.split("```python\n", 1)[1].split("```", 1)[0]

# The consumer's unit test, written with Pulumi's public mock API only (nothing from the repository's harness).
CONSUMER_CHECK = '''
import json
import runpy

import pulumi

class Mocks(pulumi.runtime.Mocks):
    def __init__(self):
        self.registered = []

    def new_resource(self, args):
        self.registered.append({"type": args.typ, "name": args.name, "custom": args.custom, "inputs": args.inputs})
        arm_id = f"/subscriptions/0/resourceGroups/rg-consumer-dev/providers/{args.typ}/{args.name}"
        state = {"name": args.inputs.get("name", args.name), **args.inputs}
        if args.typ == "random:index/randomString:RandomString":  # what the provider computes
            state["result"] = "x" * int(args.inputs["length"])
        return [arm_id if args.custom else None, state]

    def call(self, args):
        return {}

mocks = Mocks()
pulumi.runtime.set_mocks(mocks, project="consumer", stack="dev", preview=False)

@pulumi.runtime.test
def program():
    consumer = runpy.run_path("__main__.py")  # the project's program, as the Pulumi host runs it
    return consumer["vault"].vault_id

program()
print(json.dumps(mocks.registered, default=str))
'''


def test_a_consumer_program_outside_the_repo_builds_the_components_under_mocks(installed: Path,
                                                                                 outside: Path) -> None:
    (outside / "Pulumi.yaml").write_text("name: consumer\nruntime: python\n")
    (outside / "__main__.py").write_text(readme_consumer_program())
    (outside / "check_infra.py").write_text(CONSUMER_CHECK)

    result = _run([installed, "check_infra.py"], cwd=outside)

    assert result.returncode == 0, result.stderr[-4000:]
    registered = json.loads(result.stdout.strip().splitlines()[-1])
    by_type: dict[str, list[dict]] = {}
    for resource in registered:
        by_type.setdefault(resource["type"], []).append(resource)
    assert {"inferforge:index:KeyVault", "azure-native:keyvault:Vault", "azure-native:network:VirtualNetwork",
            "azure-native:network:PrivateEndpoint", "azure-native:operationalinsights:Workspace"} <= set(by_type)
    (vault,) = by_type["azure-native:keyvault:Vault"]
    properties = vault["inputs"]["properties"]
    assert properties["publicNetworkAccess"] == "Disabled"
    assert properties["enableRbacAuthorization"] is True and properties["enablePurgeProtection"] is True
    (endpoint,) = [e for e in by_type["azure-native:network:PrivateEndpoint"] if e["name"].startswith("vault")]
    assert endpoint["inputs"]["subnet"]["id"].endswith("/net-snet-private-endpoints"), "wired to the Network's subnet"
    assert endpoint["inputs"]["privateLinkServiceConnections"][0]["privateLinkServiceId"].endswith("/vault-vault")
    assert all(r["inputs"].get("tags", {}).get("costCenter") == "cc-42"
               for r in registered if r["custom"] and r["type"].startswith("azure-native:") and "tags" in r["inputs"])


def test_installed_policies_script_lists_the_pack(installed: Path, outside: Path) -> None:
    result = _run([installed.parent / "inferforge-policies", "list", "--json"], cwd=outside)
    assert result.returncode == 0, result.stderr
    policies = json.loads(result.stdout)
    assert len(policies) > 20 and {"dev", "test", "prod"} == set(policies[0]["enforcement"])
    assert "keyvault-public-network-disabled" in {p["name"] for p in policies}


def test_installed_plan_script_prints_usage_and_plans_a_consumer_projects_stack(installed: Path,
                                                                                outside: Path) -> None:
    plan = installed.parent / "inferforge-plan"
    usage = _run([plan, "--help"], cwd=outside)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: inferforge-plan"), usage.stderr

    nothing_here = _run([plan, "--stack", "dev"], cwd=outside)
    assert nothing_here.returncode == 2 and "Traceback" not in nothing_here.stderr
    assert "no stack files" in nothing_here.stderr and "--cwd" in nothing_here.stderr

    # A consumer project holding a stack file of its own: the current directory is the project.
    (outside / "Pulumi.yaml").write_text("name: inferforge\nruntime: python\n")
    shutil.copy(REPO / "Pulumi.dev.yaml", outside / "Pulumi.dev.yaml")
    planned = _run([plan, "--stack", "dev", "--json"], cwd=outside)
    assert planned.returncode == 0, planned.stderr[-4000:]
    document = json.loads(planned.stdout)
    assert document["stack"] == "dev" and document["violations"] == []
    assert document["summary"]["byType"]["azure-native:keyvault:Vault"] == 1


def test_installed_serve_script_names_the_missing_extra(installed: Path, outside: Path) -> None:
    result = _run([installed.parent / "inferforge-serve", "--help"], cwd=outside)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'serve' extra" in result.stderr and 'pip install "inferforge[serve]"' in result.stderr
    assert "torch" in result.stderr


def test_installed_gateway_script_names_the_missing_extra(installed: Path, outside: Path) -> None:
    result = _run([installed.parent / "inferforge-gateway", "--help"], cwd=outside)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'gateway' extra" in result.stderr and 'pip install "inferforge[gateway]"' in result.stderr
    assert "redis" in result.stderr


def test_a_distribution_pinned_in_two_extras_has_one_version() -> None:
    # The serving and gateway images share the HTTP stack; their pin files must not drift apart.
    versions: dict[str, set[str]] = {}
    for extra in ("platform", "serve", "gateway", "dev"):
        for line in (REPO / f"requirements-{extra}.txt").read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                name, _, version = line.strip().partition("==")
                versions.setdefault(name.split("[")[0].lower(), set()).add(version)
    assert {name: v for name, v in versions.items() if len(v) > 1} == {}
