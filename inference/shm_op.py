"""DeepSpeed's CPU shared-memory all-reduce op: built ahead of time, loaded with bounded waits.

With more than one rank on CPU, `deepspeed.init_distributed` loads the `deepspeed_shm_comm` op
(`deepspeed/ops/op_builder/cpu/comm.py`, `ShareMemCommBuilder`: `csrc/cpu/comm/shm*.cpp`). Unless the
DeepSpeed package was installed with it prebuilt (`DS_BUILD_SHM_COMM=1`; the CUDA image needs no build), torch's
JIT extension builder compiles it at the first TP start (~1 min on 2 idle cores, minutes under
load) into `$TORCH_EXTENSIONS_DIR/deepspeed_shm_comm` (default: a directory of this interpreter's own under
`~/.cache/torch_extensions`, see `default_extensions_root`).
Torch serializes builders with a lock file in that directory that it waits on forever, silently;
every load holds it for a moment (a no-op rebuild check), so a start killed at the wrong time left it
behind and every later start hung. On CUDA nodes the op is not used (NCCL does the all-reduce;
DeepSpeed's CUDA accelerator has no shm op).

`ensure_loaded()` runs on every rank before `init_distributed`:
  * inferforge processes take turns through an advisory `flock` next to the build (released by the
    kernel when its holder dies, so it cannot go stale), waiting at most the bound;
  * holding it, torch's lock file is stale unless a live process has it open (torch keeps its
    descriptor open while it holds the lock): a stale one is removed with a warning, a live one
    (a build outside inferforge) is waited for within the same bound;
  * then the op is loaded, which builds it if needed; a build still running at the deadline ends
    the process with exit status 1 (a C++ compiler cannot be interrupted from Python).
Every wait logs what it waits for, where, and for how long, every `LOG_EVERY_S`. Once loaded,
DeepSpeed's own `build_shm_op()` finds the module in its op cache and takes no lock again.

Whether a start uses the op at all is `INFERFORGE_SHM_OP` (`prepare()`):
  * `auto` (default): use the op when an up-to-date build is here (newer than every source and header,
    so loading it compiles nothing); otherwise run tensor parallelism with DeepSpeed's fallback,
    torch.distributed's all-reduce over gloo (same results, slower), and log how to build the op. A
    start never compiles C++ unasked: a cold build took 30 s on an idle machine here and ran past 10
    minutes on a busy CI one.
  * `build`: load it, building it first if needed, within the bound (what `python -m inference.shm_op
    build` does ahead of time).
  * `off`: never use it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("inference.shm_op")

OP_NAME = "deepspeed_shm_comm"
# Bound on waiting for and building the op at start-up (a cold build took ~1 min on 2 idle cores and
# several under load). INFERFORGE_SHM_OP_TIMEOUT_S overrides it; Kubernetes' startup probe must allow
# at least this much more than the model load.
DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "INFERFORGE_SHM_OP_TIMEOUT_S"
MODE_ENV = "INFERFORGE_SHM_OP"
MODES = ("auto", "build", "off")
LOG_EVERY_S = 15.0
POLL_S = 0.2
BUILD_TIMEOUT_EXIT_CODE = 1


class StartupWaitTimeout(RuntimeError):
    """A start-up wait ran past its bound (the message names what was waited for)."""


def timeout_from_env(environ: dict[str, str] | None = None) -> float:
    raw = (os.environ if environ is None else environ).get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be > 0 seconds, got {raw}")
    return value


def mode_from_env(environ: dict[str, str] | None = None) -> str:
    raw = (os.environ if environ is None else environ).get(MODE_ENV, "auto")
    mode = raw.strip().lower()
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV}={raw!r} is not one of {', '.join(MODES)}")
    return mode


def shm_op_builder() -> Any | None:
    """DeepSpeed's builder of the op when this process would JIT-build it, else None."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import accelerator_name, installed_ops

    accelerator = get_accelerator()
    builder = accelerator.create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None  # not this accelerator's (CUDA: NCCL), or not this platform's
    if installed_ops.get(builder.NAME, False) and accelerator_name == accelerator._name:
        return None  # prebuilt into the DeepSpeed package: a plain import, no lock
    return builder


def default_extensions_root() -> Path:
    """This interpreter's own build root, used unless TORCH_EXTENSIONS_DIR is set.

    torch's default (`~/.cache/torch_extensions/py311_cpu`) is shared by every virtualenv of the user;
    two checkouts whose DeepSpeed sources live at different paths then rebuild the op over each
    other's build, and a start waiting on the other's rebuild can miss the process-group join bound.
    """
    from torch.utils.cpp_extension import get_default_build_root

    tag = hashlib.sha1(sys.prefix.encode()).hexdigest()[:10]
    return Path(get_default_build_root()) / f"inferforge-{tag}"


def build_directory(name: str = OP_NAME) -> Path:
    """Where torch's JIT builder puts (and locks) extension `name` (see `default_extensions_root`)."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or default_extensions_root()) / name


def lock_holders(path: Path) -> list[int]:
    """Pids of live processes that have `path` open (torch's lock holder keeps it open)."""
    import psutil

    target = str(path)
    holders = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if any(f.path == target for f in proc.open_files()):
                holders.append(proc.pid)
    return holders


class _Deadline:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.started = time.monotonic()
        self._last_log = self.started

    @property
    def waited_s(self) -> float:
        return time.monotonic() - self.started

    def check(self, what: str) -> None:
        """Raise past the deadline; log every LOG_EVERY_S otherwise."""
        now = time.monotonic()
        if now - self.started >= self.timeout_s:
            raise StartupWaitTimeout(f"gave up after {self.timeout_s:g}s waiting for {what}")
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.warning("still waiting for %s (%.0fs of %gs)", what, now - self.started, self.timeout_s)


@contextlib.contextmanager
def _turn(build_dir: Path, deadline: _Deadline) -> Iterator[None]:
    """Hold the inferforge build lock of `build_dir` (one process at a time builds or loads)."""
    path = build_dir / "inferforge.lock"
    with path.open("a") as handle:
        what = (f"the lock {path} (another process is building or loading DeepSpeed's shm op; "
                "it is released when that process ends)")
        logged = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not logged:
                    log.info("waiting for %s, at most %gs", what, deadline.timeout_s)
                    logged = True
                deadline.check(what)
                time.sleep(POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _clear_torch_lock(build_dir: Path, deadline: _Deadline) -> None:
    """Remove torch's lock file if no live process holds it; wait (bounded) while one does."""
    lock = build_dir / "lock"
    while lock.exists():
        holders = lock_holders(lock)
        if not holders:
            log.warning("removing the stale lock %s: no live process holds it (a build or load was "
                        "killed while holding it)", lock)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            return
        deadline.check(f"torch's lock {lock}, held by process(es) {holders} outside inferforge")
        time.sleep(POLL_S)


def ensure_loaded(timeout_s: float | None = None, *, load: Callable[[], Any] | None = None,
                  build_dir: Path | None = None, exit_on_build_timeout: bool = True) -> None:
    """Load (building if needed) DeepSpeed's CPU shm all-reduce op within `timeout_s`.

    `load` and `build_dir` default to DeepSpeed's builder and torch's directory for the op (tests
    pass their own). No-op where the op is not JIT-built (CUDA, or prebuilt into DeepSpeed).
    """
    if load is None:
        builder = shm_op_builder()
        if builder is None:
            return
        load = builder.load
        # torch reads this when it builds/loads: point it at the same directory we lock and watch.
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(default_extensions_root()))
        build_dir = build_directory(builder.NAME)
    assert build_dir is not None
    build_dir.mkdir(parents=True, exist_ok=True)
    deadline = _Deadline(timeout_from_env() if timeout_s is None else timeout_s)
    with _turn(build_dir, deadline):
        _clear_torch_lock(build_dir, deadline)
        remaining = max(0.0, deadline.timeout_s - deadline.waited_s)
        built = any(build_dir.glob("*.so"))
        log.info("loading DeepSpeed's shm all-reduce op from %s%s, at most %.0fs", build_dir,
                 "" if built else " (first start: building it, ~1 min or more)", remaining)
        done = threading.Event()

        def watch() -> None:
            started = time.monotonic()
            while not done.wait(min(LOG_EVERY_S, max(0.0, remaining - (time.monotonic() - started)))):
                elapsed = time.monotonic() - started
                if elapsed >= remaining:
                    log.error("DeepSpeed's shm op did not build/load in %s within %.0fs; exiting. "
                              "Build it ahead with `python -m inference.shm_op build`", build_dir, remaining)
                    if exit_on_build_timeout:
                        logging.shutdown()
                        os._exit(BUILD_TIMEOUT_EXIT_CODE)
                    return
                log.info("still building/loading DeepSpeed's shm op in %s (%.0fs)", build_dir, elapsed)

        watcher = threading.Thread(target=watch, name="inferforge-shm-op-watch", daemon=True)
        watcher.start()
        try:
            load()
        finally:
            done.set()
    log.info("DeepSpeed's shm all-reduce op is loaded (%.1fs)", deadline.waited_s)


def op_inputs(builder: Any) -> list[Path]:
    """The files a build of the op compiles: its sources and the headers of its include directories."""
    files = [Path(builder.deepspeed_src_path(source)) for source in builder.sources()]
    for include in builder.include_paths():
        root = Path(builder.deepspeed_src_path(include))
        files += [path for path in root.rglob("*") if path.is_file()]
    return files


def is_built(build_dir: Path, inputs: list[Path], name: str = OP_NAME) -> bool:
    """A build whose load compiles nothing: the library exists and is newer than every input.

    Loading a build older than its sources (DeepSpeed reinstalled, so every source has a new mtime)
    makes ninja recompile it: that is a build, which `auto` must not start.
    """
    library = build_dir / f"{name}.so"
    if not library.is_file():
        return False
    built_at = library.stat().st_mtime
    return all(path.stat().st_mtime <= built_at for path in inputs if path.exists())


def _skip_in_deepspeed(name: str) -> None:
    # deepspeed/comm/torch.py build_shm_op() returns None for an op marked incompatible; then
    # inference_all_reduce finds no torch.ops.deepspeed.inference_all_reduce_ and calls
    # torch.distributed.all_reduce on the process group instead.
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[name] = False


def prepare(timeout_s: float | None = None, environ: dict[str, str] | None = None) -> bool:
    """Before `deepspeed.init_distributed` on CPU: load the op or make DeepSpeed skip it, per
    INFERFORGE_SHM_OP. True when the op is loaded by us; False when DeepSpeed's own path applies
    (CUDA, prebuilt op) or the gloo all-reduce is used instead."""
    mode = mode_from_env(environ)
    builder = shm_op_builder()
    if builder is None:
        return False
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(default_extensions_root()))
    build_dir = build_directory(builder.NAME)
    if mode == "off" or (mode == "auto" and not is_built(build_dir, op_inputs(builder), builder.NAME)):
        _skip_in_deepspeed(builder.NAME)
        why = (f"{MODE_ENV}=off" if mode == "off" else
               f"no up-to-date build in {build_dir} (build it with `python -m inference.shm_op build`, or "
               f"set {MODE_ENV}=build to build it at start)")
        log.warning("tensor parallelism all-reduces over gloo, without DeepSpeed's shm op: %s", why)
        return False
    ensure_loaded(timeout_s)
    return True


# DeepSpeed's shm_initialize (csrc/cpu/comm/shm.cpp) names each rank's all-reduce workspace
# "{SHM_BUFFER_NAME}_{uid}_{MASTER_ADDR}_{MASTER_PORT}_{rank}" and shm_open()s it; nothing in
# DeepSpeed ever shm_unlink()s it, so every TP start left 2 x 69 MB in /dev/shm (RAM) after its
# ranks exited: 12 GiB after a day of test runs here, and inside a pod it counts against the memory
# limit across container restarts.
SHM_BUFFER_NAME = "deepspeed_allreduce_buffer"
SHM_DIR = Path("/dev/shm")


def buffer_path(rank: int, environ: dict[str, str] | None = None) -> Path:
    """Where `rank`'s all-reduce workspace lives while its name exists."""
    env = os.environ if environ is None else environ
    name = f"{SHM_BUFFER_NAME}_{os.getuid()}_{env.get('MASTER_ADDR', '')}_{env.get('MASTER_PORT', '')}_{rank}"
    return SHM_DIR / name


def unlink_buffer(rank: int) -> bool:
    """Remove the name of this rank's workspace once every rank has mapped it (after a barrier):
    the mappings stay valid until the processes exit, and then the kernel frees the memory.
    True when there was one (the op was in use)."""
    try:
        buffer_path(rank).unlink()
    except FileNotFoundError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.shm_op",
                                     description="Build DeepSpeed's CPU shared-memory all-reduce op ahead of time.")
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--timeout", type=float, default=None, help=f"seconds (default {DEFAULT_TIMEOUT_S:g})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if shm_op_builder() is None:
        print("DeepSpeed's shm op needs no build here (CUDA accelerator, or prebuilt into DeepSpeed)")
        return 0
    try:
        ensure_loaded(args.timeout)
    except StartupWaitTimeout as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"DeepSpeed's shm op is built in {build_directory()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
