"""Chat templates: the `--chat-template` override and rendering messages (and tools) to prompt ids.

One place renders conversations, so `/v1/chat/completions` and `/tokenize` agree token for token.
Rendering follows Hugging Face's `apply_chat_template` (as vLLM does): the template gets the
messages in HF's convention (`ChatMessage.to_template`), the tools as OpenAI tool objects,
`add_generation_prompt` and `continue_final_message`; the rendered text already holds the special
tokens (bos, role markers), so it is encoded without adding more unless asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import errors
from .protocol import ChatMessage

# A template is a few KiB; a longer value given inline is much more likely a mistake.
MAX_TEMPLATE_CHARS = 1024 * 1024


def load_chat_template(spec: str) -> str:
    """The template text of a `--chat-template` value: a file path, or the Jinja template itself.

    Raises ValueError naming the problem (not a file and not a template, unreadable, or a syntax
    error), so a bad flag fails at start, not at the first chat request.
    """
    path = Path(spec)
    text: str
    try:
        is_file = path.is_file()
    except OSError:  # e.g. a long inline template is not a valid path name
        is_file = False
    if is_file:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--chat-template file {spec} cannot be read: {exc}") from None
    elif "{{" in spec or "{%" in spec:
        text = spec
    else:
        raise ValueError(f"--chat-template {spec[:80]!r} is neither an existing file nor an inline Jinja "
                         "template (inline templates contain '{{' or '{%')")
    if len(text) > MAX_TEMPLATE_CHARS:
        raise ValueError(f"--chat-template is {len(text)} characters; at most {MAX_TEMPLATE_CHARS} allowed")
    try:
        # The same sandboxed environment transformers renders templates in.
        ImmutableSandboxedEnvironment().parse(text)
    except TemplateError as exc:
        raise ValueError(f"--chat-template is not a valid Jinja template: {exc}") from None
    return text


def has_template(tokenizer: Any, override: str | None) -> bool:
    """Whether chat requests can be rendered at all."""
    return bool(override or getattr(tokenizer, "chat_template", None))


def render_prompt_ids(
    tokenizer: Any,
    messages: Sequence[ChatMessage],
    *,
    override: str | None = None,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    add_special_tokens: bool = False,
) -> list[int]:
    """Prompt token ids of a conversation; a 400 when the template cannot render it."""
    if not has_template(tokenizer, override):
        raise errors.bad_request("This model has no chat template; use /v1/completions or start the server "
                                 "with --chat-template.", code="chat_template_missing")
    if continue_final_message and (add_generation_prompt or messages[-1].role != "assistant"):
        raise errors.bad_request(
            "continue_final_message needs add_generation_prompt false and an assistant message last",
            code="invalid_parameter")
    try:
        text = tokenizer.apply_chat_template(
            [m.to_template() for m in messages],
            tools=tools or None,
            chat_template=override,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=False,
        )
    except (TemplateError, ValueError) as exc:
        # Templates raise (via raise_exception) for conversations they do not support, e.g. a
        # second system message or roles out of order; the message is the template's own.
        raise errors.bad_request(f"The messages do not fit the model's chat template: {str(exc)[:300]}",
                                 code="invalid_messages") from None
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)
