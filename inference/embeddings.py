"""`POST /v1/embeddings`: pooled, L2-normalised hidden states of an encoder, on rank 0.

Source (chosen by `python -m inference serve` flags):
  * `--embeddings served`: the served model's own final hidden states (its base model, loaded with
    `AutoModel` a second time on rank 0; only at `--tp-size 1`, where that copy fits next to the
    engine's; larger deployments use a dedicated embedding model).
  * `--embeddings-model-dir DIR`: a separate embedding model (a Hugging Face encoder or decoder
    directory, e.g. a BGE/E5/GTE checkpoint or Qwen3-Embedding).
Pooling is `mean` (over the input's tokens; BERT-style sentence embedding models) or `last` (the
last token; decoder embedding models such as E5-Mistral and Qwen3-Embedding), then L2 normalisation,
so cosine similarity is a dot product (pgvector's `vector_cosine_ops` / `<=>`).

`dimensions` (OpenAI's text-embedding-3 parameter) truncates to the first N dimensions and
renormalises, which is only meaningful for models trained with Matryoshka representation learning;
it is accepted only when the operator declares the model supports it
(`--embeddings-matryoshka`), else a request for fewer dimensions than the model's is a 400.

Work runs in one worker thread (the event loop never waits on a forward), in micro-batches of at
most MAX_BATCH_TOKENS padded tokens; requests are bounded in inputs, tokens per input and tokens in
all (400/413 naming the field), and in how many may wait (429).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import defaults, errors, json_body

if TYPE_CHECKING:
    from .requests import RequestHandling

log = logging.getLogger("inference.embeddings")

# OpenAI: at most 2048 inputs per request and 300,000 tokens in all.
MAX_INPUTS = 2048
MAX_REQUEST_TOKENS = 300_000
# Padded tokens per forward: bounds activation memory (batch x longest input).
MAX_BATCH_TOKENS = 16_384
# Requests waiting for the worker beyond this get 429 (each may hold MAX_REQUEST_TOKENS).
MAX_WAITING_REQUESTS = 32
POOLINGS = ("mean", "last")


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings (OpenAI's shape); unknown fields are ignored like everywhere else."""

    model_config = ConfigDict(strict=True, extra="allow")

    model: str | None = None
    # A string, a list of strings, a list of token ids, or a list of token-id lists (OpenAI's forms).
    input: str | list[str] | list[Annotated[int, Field(ge=0)]] | list[list[Annotated[int, Field(ge=0)]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be an empty list")
        if isinstance(value, list) and len(value) > MAX_INPUTS:
            raise ValueError(f"input has {len(value)} items; at most {MAX_INPUTS} are allowed per request")
        return value

    @property
    def inputs(self) -> list[str | list[int]]:
        """Every input, in order: a text or a list of token ids."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if value and isinstance(value[0], int):
            return [value]  # type: ignore[list-item]
        return list(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class EmbeddingConfig:
    """How the embedding model is loaded and used (from the serve flags)."""

    model_dir: Path
    model_name: str
    pooling: str = defaults.EMBEDDINGS_POOLING_MODEL_DIR
    matryoshka: bool = False
    """The model was trained for truncated embeddings: `dimensions` < its width is allowed."""
    max_input_tokens: int | None = None
    """Tokens per input; default the model's max_position_embeddings (capped at 8192)."""
    device: str = "cpu"
    dtype: torch.dtype = torch.float32


class EmbeddingModel:
    """The encoder, its tokenizer and the pooling (runs in the service's worker thread)."""

    def __init__(self, cfg: EmbeddingConfig) -> None:
        from transformers import AutoModel, AutoTokenizer

        if cfg.pooling not in POOLINGS:
            raise ValueError(f"pooling {cfg.pooling!r} is not one of {', '.join(POOLINGS)}")
        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model_dir)
        # A causal LM directory loads its base model (the LM head is not needed and is dropped).
        self.model = AutoModel.from_pretrained(cfg.model_dir, dtype=cfg.dtype).to(cfg.device).eval()
        config = self.model.config
        self.dimensions = int(config.hidden_size)
        self.vocab_size = int(config.vocab_size)
        limit = getattr(config, "max_position_embeddings", None) or 8192
        self.max_input_tokens = cfg.max_input_tokens or min(int(limit), 8192)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True)

    @torch.inference_mode()
    def embed(self, inputs: list[list[int]]) -> torch.Tensor:
        """[len(inputs), dimensions] float32 L2-normalised embeddings, in micro-batches."""
        out = torch.empty((len(inputs), self.dimensions), dtype=torch.float32)
        # Similar lengths together: less padding.
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and len(inputs[order[end]]) * (end + 1 - start) <= MAX_BATCH_TOKENS:
                end += 1
            batch = [inputs[i] for i in order[start:end]]
            out[order[start:end]] = self._forward(batch)
            start = end
        return out

    def _forward(self, batch: list[list[int]]) -> torch.Tensor:
        longest = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, tokens in enumerate(batch):  # right padding: the last token is at length - 1
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        device = self.cfg.device
        hidden = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state.float().cpu()
        if self.cfg.pooling == "mean":
            weights = mask.unsqueeze(-1).float()
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        else:
            pooled = hidden[torch.arange(len(batch)), mask.sum(dim=1) - 1]
        return torch.nn.functional.normalize(pooled, dim=-1)


class EmbeddingService:
    """Validates, bounds and runs embedding requests (HTTP layer, rank 0)."""

    def __init__(self, model: EmbeddingModel, served_names: tuple[str, ...]) -> None:
        self.model = model
        self.names = tuple(dict.fromkeys((*served_names, model.cfg.model_name)))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embeddings")
        self._waiting = 0

    @classmethod
    def load(cls, cfg: EmbeddingConfig, served_names: tuple[str, ...] = ()) -> EmbeddingService:
        return cls(EmbeddingModel(cfg), served_names)

    def _token_ids(self, req: EmbeddingRequest) -> list[list[int]]:
        model = self.model
        ids: list[list[int]] = []
        total = 0
        for i, item in enumerate(req.inputs):
            field = "input" if isinstance(req.input, str) or (req.input and isinstance(req.input[0], int)) \
                else f"input.{i}"
            if isinstance(item, str):
                if not item:
                    raise errors.bad_request(f"{field} is an empty string; send at least one character",
                                             code="invalid_input")
                tokens = model.tokenize(item)
            else:
                if not item:
                    raise errors.bad_request(f"{field} is an empty token list", code="invalid_input")
                bad = next((t for t in item if t >= model.vocab_size), None)
                if bad is not None:
                    raise errors.bad_request(f"{field} has token id {json_body.quote(bad)}; token ids must be in "
                                             f"[0, {model.vocab_size})", code="invalid_input")
                tokens = item
            if len(tokens) > model.max_input_tokens:
                raise errors.bad_request(f"{field} has {len(tokens)} tokens; this embedding model takes at most "
                                         f"{model.max_input_tokens} per input", code="context_length_exceeded")
            total += len(tokens)
            if total > MAX_REQUEST_TOKENS:
                raise errors.APIError(413, f"input holds more than {MAX_REQUEST_TOKENS} tokens in all; split it "
                                      "over several requests", "invalid_request_error", "request_too_large")
            ids.append(tokens)
        return ids

    def _dimensions(self, req: EmbeddingRequest) -> int:
        native = self.model.dimensions
        wanted = req.dimensions
        if wanted is None or wanted == native:
            return native
        if wanted > native:
            raise errors.bad_request(f"dimensions {json_body.quote(wanted)} exceeds this model's {native}",
                                     code="invalid_parameter")
        if not self.model.cfg.matryoshka:
            raise errors.bad_request(
                f"dimensions {json_body.quote(wanted)}: this model only gives {native}-dimensional embeddings "
                "(truncation needs a Matryoshka-trained model; the operator enables it with "
                "--embeddings-matryoshka)", code="invalid_parameter")
        return wanted

    async def create(self, req: EmbeddingRequest) -> dict[str, Any]:
        """The OpenAI response body of a parsed request."""
        dimensions = self._dimensions(req)
        if self._waiting >= MAX_WAITING_REQUESTS:
            raise errors.queue_full(1.0)
        self._waiting += 1
        try:
            loop = asyncio.get_running_loop()
            ids = await loop.run_in_executor(self._pool, self._token_ids, req)
            vectors = await loop.run_in_executor(self._pool, self.model.embed, ids)
        finally:
            self._waiting -= 1
        if dimensions < vectors.shape[1]:
            vectors = torch.nn.functional.normalize(vectors[:, :dimensions], dim=-1)
        tokens = sum(len(t) for t in ids)
        data_out = [{"object": "embedding", "index": i, "embedding": _encode(vector, req.encoding_format)}
                    for i, vector in enumerate(vectors)]
        return {"object": "list", "data": data_out, "model": req.model or self.names[0],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _encode(vector: torch.Tensor, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # OpenAI's format: the float32 values' little-endian bytes, base64-encoded.
        return base64.b64encode(vector.to(torch.float32).numpy().astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def embeddings_handler(server: RequestHandling) -> Callable[[Any], Awaitable[Any]]:
    """The /v1/embeddings route: a 400 when the server was started without an embedding source."""
    from starlette.responses import JSONResponse

    state = server.state

    async def handler(request: Any) -> Any:
        service: EmbeddingService | None = state.embeddings
        if service is None:
            raise errors.bad_request("this server does not serve embeddings (the operator enables them with "
                                     "--embeddings served or --embeddings-model-dir DIR)",
                                     code="embeddings_not_enabled")
        req = await server.parse_body(request, EmbeddingRequest)
        if req.model is not None and req.model not in service.names:
            raise errors.model_not_found(req.model, service.names[0])
        server.check_admission(None)
        return JSONResponse(await service.create(req))

    return handler
