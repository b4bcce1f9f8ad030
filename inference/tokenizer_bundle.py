"""The server's tokenizer as files: what `GET /tokenizer` serves, and what the gateway loads to count
prompts in its own process exactly as this server counts them.

A bundle is `{"hash", "files": {name: base64}, "chat_template", "max_model_len"}`: the files are what
`save_pretrained` writes for the live tokenizer object (tokenizer.json, tokenizer_config.json,
chat_template.jinja, ...), so `AutoTokenizer.from_pretrained` on them rebuilds the very tokenizer
the server encodes with; `chat_template` is the `--chat-template` override (None: the tokenizer's
own). The hash covers all of it and the server sends it on every response of its endpoints
(`HASH_HEADER`), so a client holding a copy notices when the server's tokenizer changed.

Torch-free (the gateway's image imports it): transformers is imported only to load a bundle.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

HASH_HEADER = "x-inferforge-tokenizer"
# A tokenizer.json of a 256k vocabulary is ~35 MB; more than this is not a tokenizer.
MAX_BUNDLE_BYTES = 128 * 1024 * 1024


def digest(files: dict[str, bytes], chat_template: str | None, max_model_len: int) -> str:
    """SHA-256 over the files (name and bytes, in name order), the override template and the context length."""
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(f"file {len(name)}:{name} {len(data)}:".encode())
        h.update(data)
    template = b"" if chat_template is None else chat_template.encode("utf-8")
    h.update(f"template {chat_template is not None} {len(template)}:".encode())
    h.update(template)
    h.update(f"max_model_len {max_model_len}".encode())
    return h.hexdigest()


def make_bundle(tokenizer: Any, chat_template: str | None, max_model_len: int) -> dict[str, Any]:
    """The bundle of a live tokenizer (written by `save_pretrained` to a temporary directory, read back)."""
    with tempfile.TemporaryDirectory(prefix="inferforge-tokenizer-") as directory:
        tokenizer.save_pretrained(directory)
        files = {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir()) if p.is_file()}
    return {"hash": digest(files, chat_template, max_model_len),
            "files": {name: base64.b64encode(data).decode("ascii") for name, data in files.items()},
            "chat_template": chat_template, "max_model_len": max_model_len}


def _safe_name(name: Any) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= 255 and Path(name).name == name
            and not name.startswith(".") and "\\" not in name and "\x00" not in name)


def load_bundle(bundle: Any) -> tuple[Any, str, str | None, int]:
    """(tokenizer, hash, override template, max_model_len) of a bundle; ValueError if it is malformed or its
    hash does not match its contents. Blocking (file writes, tokenizer load): call it off the event loop."""
    if not isinstance(bundle, dict):
        raise ValueError("the tokenizer bundle is not a JSON object")
    files_b64, template, max_len, claimed = (bundle.get("files"), bundle.get("chat_template"),
                                             bundle.get("max_model_len"), bundle.get("hash"))
    if not isinstance(files_b64, dict) or not files_b64 or not all(map(_safe_name, files_b64)):
        raise ValueError("the tokenizer bundle has no files or a file name that is not a plain name")
    if template is not None and not isinstance(template, str):
        raise ValueError("chat_template must be a string or null")
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
        raise ValueError("max_model_len must be a positive integer")
    try:
        files = {name: base64.b64decode(data, validate=True) for name, data in files_b64.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a tokenizer file is not valid base64: {exc}") from None
    if sum(map(len, files.values())) > MAX_BUNDLE_BYTES:
        raise ValueError("the tokenizer bundle is larger than any tokenizer")
    actual = digest(files, template, max_len)
    if actual != claimed:
        raise ValueError(f"the tokenizer bundle's hash {str(claimed)[:64]!r} does not match its contents ({actual})")
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="inferforge-tokenizer-") as directory:
        for name, data in files.items():
            (Path(directory) / name).write_bytes(data)
        # Never remote code: a bundle is data, the template runs in transformers' sandboxed Jinja environment.
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise ValueError("the bundle did not load as a fast (Rust `tokenizers`) tokenizer")
    return tokenizer, actual, template, max_len


def bundle_json(bundle: dict[str, Any]) -> bytes:
    return json.dumps(bundle, separators=(",", ":")).encode("utf-8")
