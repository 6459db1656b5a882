"""An OpenAI-compatible server (FastAPI on uvicorn) for a causal LM or a classifier.

    POST /v1/chat/completions   the assistant's next turn, in the training template
    POST /v1/completions        a continuation of a raw prompt
    POST /v1/classify           labels and calibrated probabilities of texts (a classifier run)
    GET  /v1/models             the one model served (also /v1/models/{id})
    GET  /health                status, requests running and waiting, the limits
    GET  /docs                  the OpenAPI documentation (schemas: infer/openai_api.py)
    GET  /                      the web chat (chat.html beside this file; LMs)

Generations share forward passes (infer/engine.py): concurrent requests decode together,
each in its own KV-cache slot, joining and leaving between steps. Classification requests
that arrive together are run as one padded batch (`ClassifyBatcher`).

`stream: true` answers with server-sent events (`data: {chunk}` ... `data: [DONE]`).
Sampling honours temperature, top_p, max_tokens (or max_completion_tokens), stop (up to 4
strings), seed, and top_k (an extension, off unless given). Other OpenAI fields (penalties,
logprobs, user, ...) are accepted and ignored.

Limits, each answered with JSON in OpenAI's error shape {"error": {message, type, param,
code}}, never a traceback and never a hang:
- it binds 127.0.0.1 unless told otherwise: there is no authentication;
- a body over `max_body_bytes` is 413 (by Content-Length before reading, or while reading a
  chunked one); a POST that is not `Content-Type: application/json` is 415 (which also keeps
  other web sites' pages from posting to it: their JSON needs a CORS preflight, answered by
  none here); a body that stops arriving before its Content-Length is 400 after
  `body_timeout_s`; a body that is not JSON is 400;
- a request of the wrong shape is 422, naming the field (`messages[0].content`), and so is
  max_tokens above `max_tokens_cap` (not silently clamped);
- a model name other than the served one is 404 (leaving `model` out means the served one);
- at most `max_queue` requests are held (running + waiting); the next gets 429 at once, with
  Retry-After;
- message content is text: "<|im_start|>" typed in a message is those characters, never the
  control token, so a request cannot forge a system or assistant turn (data/chat.py);
- a client that leaves mid-stream frees its slot before the next decode step;
- an error inside the model is 500 (or, once an event stream has begun, an `error` event),
  logged, and the server keeps serving;
- on Ctrl-C or SIGTERM it stops accepting, lets in-flight answers finish for up to
  `shutdown_timeout_s`, then cancels the rest.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import nn

from lmforge.data.chat import encode_prompt
from lmforge.data.tasks import encode_examples, pad_batch
from lmforge.errors import ConfigError
from lmforge.infer.engine import ClassifyBatcher, DecodeEngine, QueueFull
from lmforge.infer.engine import Request as EngineRequest
from lmforge.infer.generate import TextStream, end_token_ids
from lmforge.infer.openai_api import (
    ApiError,
    ChatCompletion,
    ChatCompletionRequest,
    ClassifyRequest,
    ClassifyResponse,
    Completion,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    _Sampling,
)

CHAT_PAGE = Path(__file__).with_name("chat.html")
RETRY_AFTER_S = 1
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; connect-src 'self'; img-src data:",
}


@dataclass
class Limits:
    """What one server holds at once, and how long it waits; `lmforge serve` flags."""

    max_batch: int = 8  # sequences decoded together (classify: texts per forward pass)
    max_queue: int = 16  # requests running + waiting; beyond it, 429 at once
    max_tokens_cap: int = 512
    max_body_bytes: int = 1_000_000
    context: int = 2048  # KV-cache positions per slot (capped by the model's max_seq_len)
    body_timeout_s: float = 2.0
    batch_wait_ms: float = 0.0  # classify: 0 = no wait; what arrives during a pass joins the next
    shutdown_timeout_s: float = 10.0

    def check(self) -> None:
        """ConfigError naming the `lmforge serve` flag of a limit out of range."""
        for name in ("max_batch", "max_queue", "max_tokens_cap", "max_body_bytes"):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} is {getattr(self, name)}; it must be at least 1")
        if self.context < 2:
            raise ConfigError(f"--context is {self.context}; it must be at least 2")
        for name in ("body_timeout_s", "batch_wait_ms", "shutdown_timeout_s"):
            if getattr(self, name) < 0:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} is {getattr(self, name)}; it must be 0 or more")


# --------------------------------------------------------------------------------------------
# What is served: a causal LM (generation) or a classifier
# --------------------------------------------------------------------------------------------


class ServedLM:
    """A causal LM and its tokenizer behind the decode engine."""

    kind = "causal_lm"

    def __init__(self, model: nn.Module, tokenizer, limits: Limits):
        self.model, self.tokenizer = model, tokenizer
        self.context = min(limits.context, model.cfg.max_seq_len)
        self.engine = DecodeEngine(model, limits.max_batch, self.context, limits.max_queue)

    def close(self) -> None:
        self.engine.shutdown()

    def health(self) -> dict:
        e = self.engine
        return {"active": e.active, "waiting": len(e.waiting), "decode_steps": e.steps}


class ServedClassifier:
    """A sequence classifier: texts -> probabilities after the calibrated temperature."""

    kind = "sequence_classifier"

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        max_length: int,
        padding_side: str,
        temperature: float,
        limits: Limits,
    ):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.padding_side, self.temperature = max_length, padding_side, temperature
        self.labels: list[str] = list(model.head_cfg.label_names)
        self.batcher = ClassifyBatcher(
            self.probabilities, limits.max_batch, limits.batch_wait_ms / 1000, limits.max_queue
        )

    def probabilities(self, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        """(len(texts), n_labels) probabilities of one padded batch, and which were cut."""
        ids, truncated = encode_examples(self.tokenizer, texts, self.max_length)
        batch = pad_batch(ids, self.tokenizer.pad_id, self.padding_side)
        with torch.inference_mode():
            logits = self.model(batch["input_ids"], attention_mask=batch["attention_mask"])
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        return probs.numpy(), truncated

    def close(self) -> None:
        self.batcher.shutdown()

    def health(self) -> dict:
        b = self.batcher
        return {"waiting": b.pending, "batches": b.batches, "temperature": self.temperature}


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------


def make_app(served: ServedLM | ServedClassifier, name: str, limits: Limits) -> FastAPI:
    created = int(time.time())
    page = CHAT_PAGE.read_text()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        served.close()  # requests still in the engine end as "cancelled"

    app = FastAPI(
        title="lmforge",
        summary=f"OpenAI-compatible API serving {name}",
        lifespan=lifespan,
        responses={k: {"model": ErrorResponse} for k in (400, 404, 413, 415, 422, 429, 500)},
    )
    app.add_middleware(BodyLimits, max_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s)

    # --- errors, all in OpenAI's shape ----------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return JSONResponse(*_validation_error(e.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        if isinstance(e, _Refused):  # BodyLimits, while FastAPI read the body
            return JSONResponse(e.error.body(), e.status_code, headers={"Connection": "close"})
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        message = {
            404: f"no such path {request.url.path!r:.80}; see GET /docs",
            405: f"{request.url.path} does not take {request.method}; see GET /docs",
        }.get(e.status_code, str(e.detail))
        return JSONResponse(ApiError(e.status_code, message, code=code).body(), e.status_code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        traceback.print_exc(file=sys.stderr)
        return JSONResponse(GENERATION_FAILED.body(), 500)

    def check_model(asked: str | None) -> None:
        if asked is not None and asked != name:
            raise ApiError(
                404,
                f"no model {asked!r:.80}; this server serves {name!r} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )

    # --- what every server answers ---------------------------------------------------------
    @app.get("/v1/models", response_model=ModelList)
    async def models():
        return ModelList(data=[ModelCard(id=name, created=created)])

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard)
    async def model_card(model_id: str):
        check_model(model_id)
        return ModelCard(id=name, created=created)

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": name,
            "kind": served.kind,
            **served.health(),
            **asdict(limits),
        }

    if isinstance(served, ServedClassifier):
        _classify_routes(app, served, name, check_model)
    else:
        _generation_routes(app, served, name, limits, check_model, page)
    return app


def _generation_routes(app, lm: ServedLM, name: str, limits: Limits, check_model, page: str):
    tok = lm.tokenizer

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page():
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.post("/v1/chat/completions", response_model=ChatCompletion)
    async def chat_completions(body: ChatCompletionRequest):
        check_model(body.model)
        if tok.im_start_id is None or tok.im_end_id is None:
            raise ApiError(
                400,
                "this model's tokenizer has no <|im_start|>/<|im_end|> tokens, so it cannot "
                "hold a conversation; use /v1/completions",
                code="not_a_chat_model",
            )
        cfg = body.sampling(limits.max_tokens_cap)
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        # leave room for the answer; a longer conversation loses its oldest turns
        room = lm.context - min(cfg.max_new_tokens, lm.context // 2)
        ids, cut = encode_prompt(tok, messages, max(1, room))
        return await _answer(lm, ids, cfg, body, name, chat=True, truncated=cut)

    @app.post("/v1/completions", response_model=Completion)
    async def completions(body: CompletionRequest):
        check_model(body.model)
        cfg = body.sampling(limits.max_tokens_cap)
        ids = tok.encode(body.prompt, add_bos=tok.bos_id is not None)
        if not ids:
            raise ApiError(
                422,
                "'prompt' is empty and this tokenizer has no BOS token to start from",
                param="prompt",
            )
        if len(ids) >= lm.context:  # cut, it would be a different text continued
            raise ApiError(
                422,
                f"the prompt is {len(ids)} tokens; this server's context is {lm.context}. "
                "Shorten the prompt",
                param="prompt",
                code="context_length_exceeded",
            )
        return await _answer(lm, ids, cfg, body, name, chat=False, truncated=False)


async def _answer(lm: ServedLM, ids, cfg, body: _Sampling, name: str, chat: bool, truncated: bool):
    gen = Generation(lm, ids, cfg)  # 429 here, before any answer starts
    head = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": name,
    }
    if body.stream:
        return StreamingResponse(
            _events(gen, head, chat, body.include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    try:
        text = "".join([piece async for piece in gen])
    except GenerationError:  # the engine printed the traceback
        raise GENERATION_FAILED from None
    finally:
        gen.close()
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    else:
        choice = {"index": 0, "text": text}
    out = head | {
        "choices": [choice | {"logprobs": None, "finish_reason": gen.finish_reason}],
        "usage": gen.usage(),
    }
    if truncated:  # an extension field; OpenAI clients ignore it
        out["lmforge"] = {
            "prompt_truncated": True,
            "note": "the conversation is longer than the context: its oldest turns were left out",
        }
    return JSONResponse(out)


async def _events(gen: Generation, head: dict, chat: bool, include_usage: bool):
    """Server-sent events of one answer. If the client leaves, Starlette cancels this
    generator at its next await, and `finally` takes the request out of the engine."""
    chunk = head | {"object": "chat.completion.chunk" if chat else "text_completion"}

    def choice(piece: str | None, finish_reason: str | None = None) -> dict:
        if chat:
            delta = {} if piece is None else {"content": piece}
            c = {"index": 0, "delta": delta}
        else:
            c = {"index": 0, "text": piece or ""}
        return c | {"logprobs": None, "finish_reason": finish_reason}

    try:
        if chat:
            role = {"index": 0, "delta": {"role": "assistant", "content": ""}}
            yield _sse(chunk | {"choices": [role | {"logprobs": None, "finish_reason": None}]})
        try:
            async for piece in gen:
                yield _sse(chunk | {"choices": [choice(piece)]})
        except GenerationError:
            yield _sse(GENERATION_FAILED.body())
            yield _sse("[DONE]")
            return
        yield _sse(chunk | {"choices": [choice(None, gen.finish_reason)]})
        if include_usage:
            yield _sse(chunk | {"choices": [], "usage": gen.usage()})
        yield _sse("[DONE]")
    finally:
        gen.close()


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


class GenerationError(Exception):
    """The model failed inside the engine while this request was running."""


class Generation:
    """One request in the engine, as an async iterator of text pieces. The engine's thread
    hands its tokens to the event loop's queue; text is made here (TextStream), and a stop
    string ends the request in the engine at once."""

    def __init__(self, lm: ServedLM, prompt_ids: list[int], cfg):
        self.lm, self.prompt_tokens = lm, len(prompt_ids)
        cfg = end_token_ids(lm.tokenizer, cfg)
        self.text = TextStream(lm.tokenizer, cfg.stop)
        self.finish_reason = "length"
        self.completion_tokens = 0
        self.queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def emit(kind: str, value) -> None:  # on the engine's thread
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop has closed (shutdown): nobody is listening
                pass

        self.request = EngineRequest(prompt_ids, cfg, emit)
        try:
            lm.engine.submit(self.request)
        except QueueFull as e:
            raise ApiError(
                429,
                f"the server is full ({e}); retry after {RETRY_AFTER_S} s",
                type="rate_limit_error",
                code="server_busy",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        self.done = False

    async def __aiter__(self) -> AsyncIterator[str]:
        while not self.done:
            kind, value = await self.queue.get()
            if kind == "token":
                self.completion_tokens += 1
                piece, stopped = self.text.push(value)
                if piece:
                    yield piece
                if stopped:
                    self.finish_reason = "stop"
                    self.close()
            elif kind == "end":
                self.done = True
                if value != "cancelled":
                    self.finish_reason = value
                if tail := self.text.flush():
                    yield tail
            else:
                self.done = True
                raise GenerationError() from value

    def close(self) -> None:
        """Leave the engine (a stop string, a client gone, an answer complete)."""
        self.done = True
        self.lm.engine.cancel(self.request)

    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def _classify_routes(app, cls: ServedClassifier, name: str, check_model):
    @app.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(body: ClassifyRequest):
        check_model(body.model)
        if len(body.input) > cls.batcher.max_batch * 8:
            raise ApiError(
                422,
                f"{len(body.input)} texts in one request; send at most "
                f"{cls.batcher.max_batch * 8} (or several requests)",
                param="input",
            )
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(result) -> None:  # on the batcher's thread
            def settle():
                if not future.done():
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)

            loop.call_soon_threadsafe(settle)

        try:
            cls.batcher.submit(body.input, done)
        except QueueFull as e:
            raise ApiError(
                429,
                f"the server is full ({e}); retry after {RETRY_AFTER_S} s",
                type="rate_limit_error",
                code="server_busy",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        probs, truncated = await future
        k = min(body.top_k, len(cls.labels))
        data = []
        for i, p in enumerate(probs):
            order = np.argsort(-p)[:k]
            top = [{"label": cls.labels[j], "probability": float(p[j])} for j in order]
            data.append({"index": i, **top[0], "top": top, "truncated": bool(truncated[i])})
        return {
            "object": "list",
            "model": name,
            "data": data,
            "temperature": cls.temperature,
            "usage": {"texts": len(body.input)},
        }


GENERATION_FAILED = ApiError(
    500,
    "generation failed inside the server (the traceback is in its log); the server goes on serving",
    type="server_error",
    code="generation_failed",
)


def _validation_error(errors: list[dict]) -> tuple[dict, int]:
    """FastAPI's validation errors as one OpenAI error: 400 for a body that is not JSON, 422
    for JSON of the wrong shape, naming the first field at fault."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        message = f"the body is not valid JSON ({first.get('ctx', {}).get('error', '')})"
        return ApiError(400, message, code="invalid_json").body(), 400
    loc = [p for p in first.get("loc", ()) if p != "body"]
    param = None
    for p in loc:
        param = f"{param}[{p}]" if isinstance(p, int) else (f"{param}.{p}" if param else str(p))
    message = first.get("msg", "invalid").removeprefix("Value error, ")
    if param:
        message = f"'{param}' {message[0].lower()}{message[1:]}" if message else param
    return ApiError(422, message, param=param, code="invalid_request").body(), 422


class BodyLimits:
    """ASGI middleware: 415 for a POST that is not JSON, 413 for a body over the cap (by its
    Content-Length, or counted as it arrives), 400 for a body that stops arriving short of
    its Content-Length. Before FastAPI reads anything, so nothing large is ever held."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if kind != b"application/json":
            e = ApiError(
                415,
                "send the body as JSON with 'Content-Type: application/json'",
                code="unsupported_media_type",
            )
            return await _send_error(send, e)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_error(send, self._too_large(int(length)))
        expected = int(length) if length is not None and length.isdigit() else None
        got, started = 0, False

        body_done = False

        async def limited_receive():
            nonlocal got, body_done
            if body_done:  # after the body, receive() waits for a disconnect: no time limit
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s or None)
            except TimeoutError:
                raise _Refused(
                    ApiError(
                        400,
                        f"the body stopped after {got:,} of the {expected or 0:,} bytes its "
                        "Content-Length announced; send the whole body",
                        code="incomplete_body",
                    )
                ) from None
            if message["type"] == "http.request":
                got += len(message.get("body", b""))
                if got > self.max_bytes:
                    raise _Refused(self._too_large(got))
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _Refused as r:
            if not started:
                await _send_error(send, r.error)

    def _too_large(self, n: int) -> ApiError:
        return ApiError(
            413,
            f"the body is {n:,}+ bytes; this server takes at most {self.max_bytes:,}",
            code="request_too_large",
        )


class _Refused(HTTPException):
    """A body refused while it is read. An HTTPException, so that FastAPI lets it through
    (any other error while reading a body becomes its generic 400)."""

    def __init__(self, error: ApiError):
        super().__init__(error.status, error.message)
        self.error = error


async def _send_error(send, e: ApiError) -> None:
    data = json.dumps(e.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": e.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------


class Server:
    """uvicorn serving an app: in the foreground until Ctrl-C (`run`), or on a thread
    (`start` / `stop`, for tests and benchmarks). Port 0 picks a free port; `.url` tells."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 8000, limits=None):
        limits = limits or Limits()
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=limits.shutdown_timeout_s,
        )
        self.server = uvicorn.Server(self.config)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def run(self) -> None:
        self.server.run()

    def start(self) -> str:
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (is the port free?)")
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(self.config.timeout_graceful_shutdown + 10)


def make_server(
    model: nn.Module,
    tokenizer,
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    classifier: dict | None = None,
) -> Server:
    """A server for a causal LM, or for a classifier when `classifier` gives its
    max_length, padding_side and temperature. Call `.run()` or `.start()`."""
    limits = limits or Limits()
    limits.check()
    model.eval()
    if classifier is not None:
        served = ServedClassifier(model, tokenizer, limits=limits, **classifier)
    else:
        served = ServedLM(model, tokenizer, limits)
    return Server(make_app(served, model_name, limits), host, port, limits)


def serve(
    loaded,
    name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    classifier: dict | None = None,
    say: Callable[[str], None] = lambda m: print(m, flush=True),
) -> None:
    """Serve a loaded artifact until Ctrl-C or SIGTERM; prints the URLs first."""
    server = make_server(loaded.model, loaded.tokenizer, name, host, port, limits, classifier)
    tok = loaded.tokenizer
    if classifier is None and (tok.im_start_id is None or tok.im_end_id is None):
        say(
            "note: this tokenizer has no <|im_start|>/<|im_end|>, so chat requests are refused; "
            "/v1/completions works"
        )
    if host not in ("127.0.0.1", "localhost"):
        say(
            f"warning: listening on {host} without authentication: anyone who can reach this "
            "address can use the model"
        )
    where = f"http://{host}:{port}"
    what = "POST /v1/classify" if classifier is not None else "/ (web chat) and /v1 (OpenAI API)"
    say(f"serving {name} at {where}: {what}; docs at {where}/docs. Ctrl-C stops")
    server.run()  # uvicorn stops gracefully on Ctrl-C / SIGTERM, then re-raises the signal
