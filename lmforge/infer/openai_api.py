"""OpenAI's wire format as pydantic models, for infer/serve.py (no HTTP here).

The request models check what a client sends (types strictly: `"temperature": "hot"` or
`true` is a client bug worth reporting, not something to coerce), and say what was wrong in
words a person can act on; FastAPI answers their failures with 422 (serve.py) and publishes
them, with the response models, in the OpenAPI schema at /docs.

Fields OpenAI defines that change nothing here (penalties, logprobs, user, ...) are accepted
and ignored, as OpenAI-compatible servers do, so that any client library works unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from lmforge.infer.generate import SamplingConfig

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
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


def _text_content(value: Any) -> str:
    """A message's content: a string, or OpenAI's list of text parts (joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in value
    ):
        return "".join(p["text"] for p in value)
    raise ValueError("must be a string (or a list of {type: text, text} parts)")


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant", "developer"]
    content: Any = Field(None, validate_default=True, description="a string, or text parts")

    @field_validator("role")
    @classmethod
    def _role(cls, role: str) -> str:
        return "system" if role == "developer" else role  # OpenAI's newer name for system

    @field_validator("content")
    @classmethod
    def _content(cls, content: Any, info: ValidationInfo) -> str:
        role = info.data.get("role")
        if content is None and role == "assistant":  # OpenAI allows it (tool calls)
            return ""
        if content is None:
            raise ValueError(f"is required in a {role or ''} message".replace("  ", " "))
        return _text_content(content)


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    model: str | None = Field(None, description="the served model's id (GET /v1/models)")
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2, description="0: greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, description="an extension; off unless given")
    n: int = Field(1, description="must be 1")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: Any = Field(
        None, validate_default=True, description=f"a string or up to {MAX_STOP_STRINGS} strings"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("must be 1: this server returns one choice per request")
        return n

    @field_validator("stop")
    @classmethod
    def _stop(cls, stop: Any) -> list[str]:
        if stop is None:
            return []
        stop = [stop] if isinstance(stop, str) else stop
        if (
            not isinstance(stop, list)
            or len(stop) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stop)
        ):
            raise ValueError(
                f"must be a string or a list of up to {MAX_STOP_STRINGS} non-empty strings"
            )
        return stop

    def sampling(self, max_tokens_cap: int) -> SamplingConfig:
        """The request's SamplingConfig; max_tokens above the server's cap is a 422, not a
        silent clamp, so a client never mistakes a cut answer for the length it asked for."""
        key = "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"
        asked = getattr(self, key)
        if asked is not None and asked > max_tokens_cap:
            raise ApiError(
                422,
                f"'{key}' is {asked}, above this server's cap of {max_tokens_cap}; ask for at "
                f"most {max_tokens_cap} (or restart the server with a larger --max-tokens-cap)",
                param=key,
                code="max_tokens_too_large",
            )
        return SamplingConfig(
            max_new_tokens=asked or max_tokens_cap,
            temperature=self.temperature,
            top_k=self.top_k or None,
            top_p=None if self.top_p >= 1 else self.top_p,
            seed=self.seed,
            stop=list(self.stop),
        )

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Sampling):
    prompt: Any = Field(description="a string, or a list holding one string")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: Any) -> str:
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, str):
            raise ValueError("must be a string (one prompt per request)")
        return value


class ClassifyRequest(_Request):
    model: str | None = Field(None, description="the served model's id (GET /v1/models)")
    input: Any = Field(description="a text, or a list of texts")
    top_k: int = Field(5, ge=1, description="how many labels to return per text")

    @field_validator("input")
    @classmethod
    def _texts(cls, value: Any) -> list[str]:
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
            raise ValueError("must be a string or a non-empty list of strings")
        return value


# --------------------------------------------------------------------------------------------
# Responses (what the OpenAPI schema at /docs shows; the server fills them in)
# --------------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    lmforge: dict | None = Field(None, description="extensions (prompt_truncated)")


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lmforge"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LabelScore(BaseModel):
    label: str
    probability: float


class Classification(BaseModel):
    index: int
    label: str
    probability: float
    top: list[LabelScore]
    truncated: bool = Field(description="the text was longer than the model's max_length")


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Classification]
    temperature: float = Field(description="the calibrated temperature the logits were divided by")
    usage: dict
