"""Start-up never waits forever on DeepSpeed's shm op build lock (inference/shm_op.py).

The op's JIT build is modelled by `torch_jit_load`, which takes torch's own FileBaton exactly as
`torch.utils.cpp_extension._jit_compile` does; the real op is exercised by the TP tests."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from torch.utils.file_baton import FileBaton

from inference import shm_op
from inference.shm_op import StartupWaitTimeout, ensure_loaded

REPO = Path(__file__).resolve().parents[2]


def torch_jit_load(build_dir: Path, loads: list[str]) -> None:
    """What every torch JIT load does around its (re)build: take the lock file, or wait on it."""
    baton = FileBaton(str(build_dir / "lock"))
    if baton.try_acquire():
        try:
            loads.append("built")
        finally:
            baton.release()
    else:
        baton.wait()  # forever, silently, while the file exists
        loads.append("waited")


def hold_open(path: Path) -> subprocess.Popen:
    """A live process holding `path` the way its creator does: torch's lock (O_EXCL, fd kept open)
    or inferforge's flock."""
    code = textwrap.dedent(f"""
        import fcntl, os, sys, time
        path = {str(path)!r}
        if path.endswith("inferforge.lock"):
            handle = open(path, "a"); fcntl.flock(handle, fcntl.LOCK_EX)
        else:
            fd = os.open(path, os.O_CREAT | os.O_EXCL)
        print("held", flush=True)
        time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_torch_alone_waits_forever_on_a_stale_lock(tmp_path: Path) -> None:
    # The hazard itself: a lock file left by a killed build, and torch's wait never returns.
    (tmp_path / "lock").touch()
    loads: list[str] = []
    waiter = threading.Thread(target=torch_jit_load, args=(tmp_path, loads), daemon=True)
    waiter.start()
    waiter.join(1.0)
    assert waiter.is_alive() and loads == []
    (tmp_path / "lock").unlink()  # let the thread end
    waiter.join(5)


def test_a_stale_torch_lock_is_removed_with_a_warning_and_the_op_loads(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "lock").touch()  # left by a start killed mid-build: nobody holds it
    loads: list[str] = []
    with caplog.at_level(logging.INFO, logger="inference.shm_op"):
        ensure_loaded(30, load=lambda: torch_jit_load(tmp_path, loads), build_dir=tmp_path)
    assert loads == ["built"]
    assert not (tmp_path / "lock").exists()
    assert f"removing the stale lock {tmp_path / 'lock'}" in caplog.text


def test_a_lock_held_by_a_live_process_is_waited_for_within_the_bound_naming_it(tmp_path: Path) -> None:
    holder = hold_open(tmp_path / "lock")  # a build outside inferforge, still running
    try:
        started = time.monotonic()
        with pytest.raises(StartupWaitTimeout, match=rf"{tmp_path / 'lock'}.*\[{holder.pid}\]"):
            ensure_loaded(1.5, load=lambda: pytest.fail("loaded while the lock was held"), build_dir=tmp_path)
        assert time.monotonic() - started < 30
        assert (tmp_path / "lock").exists()  # a live holder's lock is never removed
    finally:
        holder.kill()
        holder.wait()


def test_inferforge_processes_take_turns_and_a_dead_holder_frees_the_turn(tmp_path: Path) -> None:
    holder = hold_open(tmp_path / "inferforge.lock")
    try:
        with pytest.raises(StartupWaitTimeout, match="inferforge.lock"):
            ensure_loaded(1.0, load=lambda: pytest.fail("loaded out of turn"), build_dir=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    loads: list[str] = []
    ensure_loaded(30, load=lambda: torch_jit_load(tmp_path, loads), build_dir=tmp_path)  # the kernel freed it
    assert loads == ["built"]


def test_a_build_past_the_bound_exits_1_with_a_message_naming_the_directory(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import logging, time
        from pathlib import Path
        from inference.shm_op import ensure_loaded
        logging.basicConfig(level=logging.INFO)
        ensure_loaded(1.0, load=lambda: time.sleep(300), build_dir=Path({str(tmp_path)!r}))
    """)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == shm_op.BUILD_TIMEOUT_EXIT_CODE == 1
    assert f"did not build/load in {tmp_path}" in result.stderr
    assert time.monotonic() - started < 60


def test_the_bound_can_be_set_from_the_environment() -> None:
    assert shm_op.timeout_from_env({}) == shm_op.DEFAULT_TIMEOUT_S
    assert shm_op.timeout_from_env({shm_op.TIMEOUT_ENV: "90"}) == 90.0
    with pytest.raises(ValueError, match=shm_op.TIMEOUT_ENV):
        shm_op.timeout_from_env({shm_op.TIMEOUT_ENV: "soon"})
    with pytest.raises(ValueError, match="> 0"):
        shm_op.timeout_from_env({shm_op.TIMEOUT_ENV: "0"})


def test_the_op_that_is_built_is_deepspeeds_cpu_shm_all_reduce() -> None:
    builder = shm_op.shm_op_builder()
    if builder is None:  # pragma: no cover - CUDA machine or DeepSpeed built with DS_BUILD_SHM_COMM=1
        pytest.skip("this DeepSpeed does not JIT-build the shm op here")
    assert builder.NAME == shm_op.OP_NAME
    assert sorted(Path(s).name for s in builder.sources()) == ["shm.cpp", "shm_interface.cpp"]
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        assert shm_op.build_directory() == Path(root) / shm_op.OP_NAME


def test_each_interpreter_builds_into_its_own_directory_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two checkouts (virtualenvs) sharing torch's default directory rebuilt the op over each other.
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setattr(sys, "prefix", "/venvs/a")
    first = shm_op.build_directory()
    monkeypatch.setattr(sys, "prefix", "/venvs/b")
    second = shm_op.build_directory()
    assert first != second and first.name == second.name == shm_op.OP_NAME
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/cache/torch_extensions")
    assert shm_op.build_directory() == Path("/cache/torch_extensions") / shm_op.OP_NAME


@pytest.fixture()
def compatible_ops() -> Iterator[dict[str, bool]]:
    import deepspeed.ops

    saved = dict(deepspeed.ops.__compatible_ops__)
    yield deepspeed.ops.__compatible_ops__
    deepspeed.ops.__compatible_ops__.clear()
    deepspeed.ops.__compatible_ops__.update(saved)


def test_the_mode_is_read_from_the_environment_and_a_typo_names_the_choices() -> None:
    assert shm_op.mode_from_env({}) == "auto"
    assert shm_op.mode_from_env({shm_op.MODE_ENV: " Build "}) == "build"
    with pytest.raises(ValueError, match=r"INFERFORGE_SHM_OP='always' is not one of auto, build, off"):
        shm_op.mode_from_env({shm_op.MODE_ENV: "always"})


@pytest.mark.parametrize(("mode", "built", "loads"), [
    ("auto", None, False), ("auto", "fresh", True), ("auto", "stale", False),  # stale: loading would recompile
    ("off", "fresh", False), ("build", None, True)])
def test_prepare_loads_the_op_only_when_built_or_asked_and_otherwise_makes_deepspeed_skip_it(
        mode: str, built: str | None, loads: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        compatible_ops: dict[str, bool], caplog: pytest.LogCaptureFixture) -> None:
    from deepspeed.comm.torch import build_shm_op

    if shm_op.shm_op_builder() is None:  # pragma: no cover - CUDA machine or DeepSpeed built with the op
        pytest.skip("this DeepSpeed does not JIT-build the shm op here")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    if built:
        (tmp_path / shm_op.OP_NAME).mkdir()
        library = tmp_path / shm_op.OP_NAME / f"{shm_op.OP_NAME}.so"
        library.touch()
        if built == "stale":  # older than DeepSpeed's sources, as after DeepSpeed is reinstalled
            os.utime(library, (0, 0))
    calls: list[float | None] = []
    monkeypatch.setattr(shm_op, "ensure_loaded", calls.append)
    with caplog.at_level(logging.INFO, logger="inference.shm_op"):
        used = shm_op.prepare(environ={shm_op.MODE_ENV: mode})
    assert used is loads and calls == ([None] if loads else [])
    if not loads:
        assert build_shm_op() is None  # DeepSpeed's own loader now skips it: no compile, no lock
        assert "all-reduces over gloo" in caplog.text


def test_the_buffer_name_is_the_one_deepspeeds_shm_initialize_creates() -> None:
    import deepspeed

    source = (Path(deepspeed.__file__).parent / "ops/csrc/cpu/comm/shm.cpp").read_text()
    assert f'#define SHM_BUFFER_NAME "{shm_op.SHM_BUFFER_NAME}"' in source
    # prefix = SHM_BUFFER_NAME _ uid _ MASTER_ADDR _ MASTER_PORT; a rank's own = prefix _ rank
    assert '"%s_%d_%s_%s",\n             SHM_BUFFER_NAME,\n             getuid(),\n             addr_string,' in source
    assert 'snprintf(shm_name, NAME_BUF_SIZE, "%s_%d", shm_name_prefix, rank);' in source
    path = shm_op.buffer_path(1, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    assert path == Path(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_29500_1")


def test_a_ranks_buffer_name_is_removed_and_its_mapping_stays_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mmap

    monkeypatch.setattr(shm_op, "SHM_DIR", tmp_path)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "4242")
    path = shm_op.buffer_path(0)
    path.write_bytes(b"\0" * 4096)
    with path.open("r+b") as handle, mmap.mmap(handle.fileno(), 4096) as mapped:
        assert shm_op.unlink_buffer(0)
        assert not path.exists()
        mapped[:5] = b"still"
        assert mapped[:5] == b"still"
    assert not shm_op.unlink_buffer(0)  # nothing there (gloo all-reduce, or already removed)
