"""Fixtures of the gateway tests: real Redis and PostgreSQL on 127.0.0.1, the real inference server
on the tiny seeded model, and gateway replicas started as `python -m gateway serve` processes. The
servers live as long as this package's tests (not the whole session: the rest of the suite does not
need them holding memory and a core)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from gateway import schema
from inference.model_factory import write_model
from tests.gateway.services import PostgresServer, RedisServer, free_port

REPO = Path(__file__).resolve().parents[2]
PEPPER = "p" * 40
UPSTREAM_KEY = "u" * 40
MODEL = "tiny"
MAX_MODEL_LEN = 256
GATEWAY_ENV = {**os.environ, "INFERFORGE_GATEWAY_KEY_PEPPER": PEPPER, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="package")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port()).start()
    yield server
    server.stop()


_db_counter = iter(range(10_000))


@pytest.fixture()
def database(postgres: PostgresServer) -> str:
    """A fresh migrated database per test (tests never see each other's tenants or usage)."""
    name = f"gw{next(_db_counter)}_{os.getpid()}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = postgres.url.rsplit("/", 1)[0] + f"/{name}"
    schema.migrate(url)
    return url


@pytest.fixture()
def redis_url(redis_server: RedisServer) -> str:
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=REPO, capture_output=True, text=True,
                          env=env or GATEWAY_ENV, timeout=60)


def create_tenant(database: str, name: str, *options: str, models: str = MODEL) -> None:
    result = cli("tenants", "create", name, "--models", models, *options, "--database-url", database)
    assert result.returncode == 0, result.stderr


def create_key(database: str, tenant: str, *options: str) -> str:
    result = cli("keys", "create", "--tenant", tenant, *options, "--database-url", database)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="package")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real inference server on the tiny model, accepting only the gateway's service key."""
    directory = tmp_path_factory.mktemp("gateway_upstream")
    model_dir = write_model(directory / "model", "tiny", seed=0)
    keys = directory / "keys"
    keys.write_text(UPSTREAM_KEY)
    port = free_port()
    log = directory / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference", "serve", "--model-dir", str(model_dir), "--model-name", MODEL,
         "--port", str(port), "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN), "--max-batch-size", "32",
         "--max-waiting", "512", "--api-keys-file", str(keys)],
        cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    _wait_ready(proc, url, log)
    yield url
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready in {timeout} s:\n{log.read_text()[-3000:]}")


@dataclass
class Replica:
    url: str
    proc: subprocess.Popen
    log: Path

    def logs(self) -> str:
        return self.log.read_text()


@pytest.fixture()
def start_gateway(tmp_path: Path, model_server: str) -> Iterator[Callable[..., Replica]]:
    """Start gateway replicas (`python -m gateway serve`) in front of the model server."""
    started: list[Replica] = []
    upstream_key = tmp_path / "upstream-key"
    upstream_key.write_text(UPSTREAM_KEY)

    def start(database: str, redis_url: str, *extra: str, upstreams: list[str] | None = None) -> Replica:
        port = free_port()
        log = tmp_path / f"gateway-{port}.log"
        flags = [part for target in upstreams or [f"{MODEL}={model_server}"] for part in ("--upstream", target)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", *flags,
             "--upstream-api-key-file", str(upstream_key), "--database-url", database, "--redis-url", redis_url,
             "--port", str(port), *extra],
            cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=GATEWAY_ENV)
        replica = Replica(f"http://127.0.0.1:{port}", proc, log)
        started.append(replica)
        _wait_ready(proc, replica.url, log, timeout=60)
        return replica

    yield start
    for replica in started:
        if replica.proc.poll() is None:
            replica.proc.terminate()
            try:
                replica.proc.wait(30)
            except subprocess.TimeoutExpired:
                replica.proc.kill()
