"""Real Redis and PostgreSQL servers for the gateway tests, on 127.0.0.1 only, started per test
session in temporary directories and stopped by themselves (Debian's redis-server and PostgreSQL;
`.ci/setup` installs redis-server)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} in {timeout} s")


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server; .ci/setup does it)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, "redis-server")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (Debian: postgresql)")
    return found


@dataclass
class PostgresServer:
    """A throwaway cluster; as root, it runs as the `postgres` user (PostgreSQL refuses root)."""

    port: int
    directory: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def start(self) -> PostgresServer:
        self.directory = Path(tempfile.mkdtemp(prefix="ifg-pg-"))
        data = self.directory / "data"
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        subprocess.run(self._as_owner([_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                       "--no-sync"]), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Members of `password_users` sign in with a password (scram), everyone else is trusted: the
        # tests of token sign-in (gateway/azure_auth.py) need a server that checks the password.
        hba = data / "pg_hba.conf"
        hba.write_text("host all +password_users 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        self.proc = subprocess.Popen(
            self._as_owner([_pg_bin("postgres"), "-D", str(data), "-p", str(self.port), "-c",
                            "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.directory}",
                            "-c", "fsync=off", "-c", "max_connections=200"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, "postgres")
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("CREATE ROLE password_users NOLOGIN")
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
