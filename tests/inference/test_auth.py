"""API keys: sources (file, Key Vault), hashed constant-time verification, fail-closed middleware,
and the CLI's secure default (no key source -> refuse to start)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from azure.core.exceptions import ClientAuthenticationError, ResourceNotFoundError

from inference import auth
from inference.auth import APIKeys, KeyLoadError, load_keys_from_file, load_keys_from_key_vault, parse_keys
from tests.inference.fakes import RunningFake, fake_server, load_tokenizer

KEY_A = "sk-test-aaaaaaaaaaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bbbbbbbbbbbbbbbbbbbbbbbb"
REPO = Path(__file__).resolve().parents[2]

# ---- key sources ----------------------------------------------------------------------------------


def test_keys_may_be_one_per_line_or_comma_separated_with_comments() -> None:
    text = f"# rotated 2026-11\n{KEY_A}\n\n  {KEY_B} , {KEY_A}x\n"
    assert parse_keys(text, "test") == [KEY_A, KEY_B, KEY_A + "x"]


def test_short_keys_are_refused_by_position_without_echoing_them() -> None:
    with pytest.raises(KeyLoadError) as excinfo:
        parse_keys(f"{KEY_A}\nshort", "test")
    assert "number 2" in str(excinfo.value)
    assert "short" not in str(excinfo.value).replace("shorter", "")


def test_a_source_without_keys_is_refused() -> None:
    with pytest.raises(KeyLoadError, match="no API keys"):
        parse_keys("# only a comment\n\n", "test")


def test_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyLoadError, match="cannot read API keys file"):
        load_keys_from_file(tmp_path / "absent")


def test_key_vault_secret_value_is_parsed_like_a_file() -> None:
    calls: list[tuple[str, str]] = []

    def read(url: str, name: str) -> str:
        calls.append((url, name))
        return f"{KEY_A},{KEY_B}"

    keys = load_keys_from_key_vault("https://kv-test.vault.azure.net/", "inference-api-keys", read)
    assert keys == [KEY_A, KEY_B]
    assert calls == [("https://kv-test.vault.azure.net/", "inference-api-keys")]


@pytest.mark.parametrize("error", [ResourceNotFoundError("secret not found"),
                                   ClientAuthenticationError("no credential")])
def test_key_vault_failures_name_the_secret_and_cause(error: Exception) -> None:
    def read(url: str, name: str) -> str:
        raise error

    with pytest.raises(KeyLoadError) as excinfo:
        load_keys_from_key_vault("https://kv-test.vault.azure.net/", "inference-api-keys", read)
    assert "inference-api-keys" in str(excinfo.value)
    assert type(error).__name__ in str(excinfo.value)


def test_key_vault_url_must_be_https() -> None:
    with pytest.raises(KeyLoadError, match="not valid"):
        load_keys_from_key_vault("http://kv-test.vault.azure.net/", "s", lambda u, n: KEY_A)


def test_key_vault_is_read_with_default_azure_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    """The production reader: DefaultAzureCredential (workload identity in AKS) + SecretClient."""
    seen: dict[str, Any] = {}

    class Credential:
        def __enter__(self) -> Credential:
            return self

        def __exit__(self, *exc: object) -> None:
            seen["credential_closed"] = True

    class Secret:
        value = KEY_A

    class Client:
        def __init__(self, vault_url: str, credential: Any) -> None:
            seen["vault_url"], seen["credential"] = vault_url, credential

        def __enter__(self) -> Client:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def get_secret(self, name: str) -> Secret:
            seen["name"] = name
            return Secret()

    import azure.identity
    import azure.keyvault.secrets

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", Credential)
    monkeypatch.setattr(azure.keyvault.secrets, "SecretClient", Client)
    assert load_keys_from_key_vault("https://kv-x.vault.azure.net/", "api-keys") == [KEY_A]
    assert seen["vault_url"] == "https://kv-x.vault.azure.net/"
    assert isinstance(seen["credential"], Credential)
    assert seen["name"] == "api-keys"
    assert seen["credential_closed"]


def test_keys_are_held_only_as_digests_and_verified() -> None:
    keys = APIKeys([KEY_A, KEY_B])
    assert keys.verify(KEY_A.encode()) and keys.verify(KEY_B.encode())
    assert not keys.verify(b"sk-test-cccccccccccccccccccccccc")
    assert not keys.verify(KEY_A[:-1].encode())
    held = repr(vars(keys))
    assert KEY_A not in held and KEY_B not in held


def test_verification_compares_digests_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    APIKeys([KEY_A, KEY_B]).verify(KEY_A.encode())
    # Every key is compared (no early exit on the first match), always as 32-byte SHA-256 digests.
    assert len(compared) == 2
    assert all(len(a) == len(b) == 32 for a, b in compared)


# ---- the middleware over HTTP ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tiny_model_dir: Path) -> Iterator[RunningFake]:
    with fake_server(load_tokenizer(tiny_model_dir), api_keys=APIKeys([KEY_A, KEY_B])) as running:
        yield running


def test_requests_without_a_key_are_401_in_the_openai_shape(secured: RunningFake) -> None:
    response = httpx.post(f"{secured.url}/v1/completions", json={"prompt": "hi"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in response.json()["error"]["message"]


@pytest.mark.parametrize("header", [f"Bearer {KEY_A}x", f"Basic {KEY_A}", KEY_A, "Bearer", f"bearer {KEY_A[:-1]}"])
def test_wrong_keys_and_schemes_are_401(secured: RunningFake, header: str) -> None:
    response = httpx.post(f"{secured.url}/v1/completions", json={"prompt": "hi"},
                          headers={"Authorization": header})
    assert response.status_code == 401


def test_the_openai_client_works_with_a_right_key_and_fails_with_a_wrong_one(secured: RunningFake) -> None:
    good = openai.OpenAI(base_url=f"{secured.url}/v1", api_key=KEY_B, max_retries=0)
    assert good.completions.create(model="fake-model", prompt="hi", max_tokens=2).usage.completion_tokens == 2
    bad = openai.OpenAI(base_url=f"{secured.url}/v1", api_key="sk-wrong-wrong-wrong-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
def test_probe_and_metrics_routes_are_public(secured: RunningFake, path: str) -> None:
    assert httpx.get(f"{secured.url}{path}").status_code == 200


@pytest.mark.parametrize("path", ["/v1/models", "/v1/nothing", "/health/", "/metrics/../v1/models", "/"])
def test_every_other_route_fails_closed(secured: RunningFake, path: str) -> None:
    assert httpx.get(f"{secured.url}{path}").status_code == 401


# ---- the CLI's secure default ---------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inference", "serve", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_server_refuses_to_start_without_a_key_source(tiny_model_dir: Path) -> None:
    result = run_cli("--model-dir", str(tiny_model_dir))
    assert result.returncode == 2
    assert "no API key source" in result.stderr and "--allow-unauthenticated" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_key_file_stops_start_up_before_the_model_loads(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = run_cli("--model-dir", str(tiny_model_dir), "--api-keys-file", str(tmp_path / "absent"))
    assert result.returncode == 2
    assert "cannot read API keys file" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--api-keys-keyvault-url", "https://kv.vault.azure.net/"], "must be given together"),
    (["--api-keys-file", "k", "--api-keys-secret", "s", "--api-keys-keyvault-url", "https://x/"], "not both"),
    (["--api-keys-file", "k", "--allow-unauthenticated"], "contradicts"),
])
def test_contradictory_key_options_are_usage_errors(tiny_model_dir: Path, args: list[str], message: str) -> None:
    result = run_cli("--model-dir", str(tiny_model_dir), *args)
    assert result.returncode == 2
    assert message in result.stderr
