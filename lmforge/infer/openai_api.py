"""OpenAI's wire format for infer/serve.py: errors in OpenAI's shape, a request's JSON checked
and turned into messages or a prompt and a SamplingConfig, and one generation with the token
counts and finish reason its answer reports. No HTTP here: the server reads and writes it."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from lmforge.infer.generate import GenerationStats, SamplingConfig, stream_chat, stream_text

MAX_STOP_STRINGS = 4  # OpenAI's limit


class ApiError(Exception):
    """A failure answered to the client as JSON in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )
        self.headers = headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


# --------------------------------------------------------------------------------------------
# Requests: JSON -> validated messages / prompt and a SamplingConfig
# --------------------------------------------------------------------------------------------


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    # bool is an int in Python, but `"temperature": true` is a client bug worth reporting
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise bad_request(f"'{key}' must be a number from {low} to {high}, got {value!r:.40}", key)
    return float(value)


def _integer(body: dict, key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(
            f"'{key}' must be an integer from {low} to {high}, got {value!r:.40}", key
        )
    return value


def parse_sampling(body: dict, max_tokens_cap: int) -> SamplingConfig:
    """The sampling fields of a request, checked, as a SamplingConfig (400 ApiError if not)."""
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(key)
    if isinstance(max_tokens, int) and max_tokens > max_tokens_cap:
        raise bad_request(
            f"'{key}' is {max_tokens}, above this server's cap of {max_tokens_cap}; ask for "
            f"at most {max_tokens_cap} (or restart the server with a larger cap)",
            key,
            "max_tokens_too_large",
        )
    max_tokens = _integer(body, key, 1, max_tokens_cap)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise bad_request(
            "'top_p' must be above 0 (use temperature 0 for greedy decoding)", "top_p"
        )
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is None:
        stop = []
    if (
        not isinstance(stop, list)
        or len(stop) > MAX_STOP_STRINGS
        or not all(isinstance(s, str) and s for s in stop)
    ):
        raise bad_request(
            f"'stop' must be a string or a list of up to {MAX_STOP_STRINGS} non-empty strings",
            "stop",
        )
    n = body.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise bad_request("'n' must be 1: this server returns one choice per request", "n")
    return SamplingConfig(
        max_new_tokens=max_tokens or max_tokens_cap,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_k=_integer(body, "top_k", 0, 2**31) or None,
        top_p=None if top_p >= 1 else top_p,
        seed=_integer(body, "seed", 0, 2**63 - 1),
        stop=stop,
    )


def _content_text(content, where: str) -> str:
    """A message's content: a string, or OpenAI's list of text parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise bad_request(
        f"{where}.content must be a string (or a list of text parts)", f"{where}.content"
    )


def parse_messages(value) -> list[dict]:
    """OpenAI chat messages as [{"role", "content"}] for the ChatML template (400 if not).

    Unlike training data (data/chat.check_messages), an empty assistant turn is allowed: it
    is what a model that stopped at once said, and clients send the history back as it was.
    """
    if not isinstance(value, list) or not value:
        raise bad_request(
            "'messages' must be a non-empty list of {role, content} objects", "messages"
        )
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or "role" not in m:
            raise bad_request(f"{where} must be an object with 'role' and 'content'", where)
        role = m["role"]
        if role == "developer":  # OpenAI's newer name for the system turn
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise bad_request(
                f"{where}.role is {role!r:.40}; this model knows system, user and assistant",
                f"{where}.role",
            )
        content = m.get("content")
        if content is None and role == "assistant":  # OpenAI allows it (tool calls)
            content = ""
        out.append({"role": role, "content": _content_text(content, where)})
    return out


def parse_prompt(value) -> str:
    """A completion prompt: a string, or a list holding exactly one string."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise bad_request("'prompt' must be a string (one prompt per request)", "prompt")
    return value


# --------------------------------------------------------------------------------------------
# One generation: text pieces as they come, then the token counts and why it ended
# --------------------------------------------------------------------------------------------


class Generation:
    """One request's answer. Iterate it for text pieces; afterwards `completion_tokens` and
    `finish_reason` ("stop": a stop token or string; "length": max_tokens or the context end)
    are set. `prompt_tokens` is known before it starts."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        cfg: SamplingConfig,
        messages: list[dict] | None = None,
        prompt: str | None = None,
    ):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.stats = GenerationStats()
        if messages is not None:
            self._pieces = stream_chat(model, tokenizer, messages, cfg, self.stats)
        else:
            ids = tokenizer.encode(prompt, add_bos=tokenizer.bos_id is not None)
            if not ids:
                raise bad_request(
                    "'prompt' is empty and this tokenizer has no BOS token to start from", "prompt"
                )
            if len(ids) > model.cfg.max_seq_len:
                raise bad_request(
                    f"the prompt is {len(ids)} tokens; this model's context is "
                    f"{model.cfg.max_seq_len}. Shorten the prompt",
                    "prompt",
                    "context_length_exceeded",
                )
            self._pieces = stream_text(model, tokenizer, prompt, cfg, stats=self.stats)

    def __iter__(self) -> Iterator[str]:
        with torch.no_grad():
            yield from self._pieces

    @property
    def finish_reason(self) -> str:
        return self.stats.finish_reason

    def usage(self) -> dict:
        s = self.stats
        return {
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "total_tokens": s.prompt_tokens + s.completion_tokens,
        }
