"""An OpenAI-compatible HTTP server and a one-page web chat for an lmforge causal LM.

Any OpenAI client (the `openai` package, curl, chat front-ends) can talk to a model trained
here, and a person can talk to it from a browser. It is built on the standard library's
`ThreadingHTTPServer`: a teaching and local-use server, not a production one, so it adds no
dependency and every limit is visible below.

    POST /v1/chat/completions   the assistant's next turn (`stream_chat`: the training template)
    POST /v1/completions        a continuation of a raw prompt (`stream_text`)
    GET  /v1/models             the one model served (also /v1/models/{id})
    GET  /health                status, slots in use and the limits
    GET  /                      the web chat (chat.html beside this file)

Requests and answers follow OpenAI's wire format: `stream: true` answers with server-sent
events (`data: {chunk}\\n\\n` ... `data: [DONE]\\n\\n`). Sampling honours temperature, top_p,
max_tokens (or max_completion_tokens), stop (up to 4 strings), seed, and top_k (an extension,
off by default as in OpenAI). The `model` field may name anything: one model is served, and
answers carry its name. Other fields (penalties, logprobs, user, ...) are ignored.

Limits, each answered with JSON in OpenAI's error shape
`{"error": {"message", "type", "param", "code"}}`:
- it binds 127.0.0.1 unless told otherwise: there is no authentication;
- a body over `max_body_bytes` (Content-Length) is 413, a POST without
  `Content-Type: application/json` is 415 (which also keeps other web sites' pages from
  posting to it: their JSON needs a CORS preflight, and this server answers none);
- a body shorter than its Content-Length is 400 as soon as the client stops sending (end of
  input, or `body_timeout_s` without a byte), not a 30 s hang;
- max_tokens above `max_tokens_cap` is 400, not silently clamped, so a client never mistakes
  a cut answer for the length it asked for; without max_tokens the cap is the limit;
- at most `max_concurrent` generations run at once (they share the cores); a request that
  finds no free slot within `queue_timeout_s` gets 429 with `Retry-After` (OpenAI's clients
  wait that long and retry);
- message content is text: "<|im_start|>" typed in a message is those characters, never the
  control token, so a request cannot forge a system or assistant turn (data/chat.py);
- a bad request is 4xx, an unknown path 404, a wrong method 405; an error inside generation
  is 500 (or, once an event stream has begun, an `error` event), logged, and the server
  keeps serving.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from torch import nn

from lmforge.artifact import load_causal_lm
from lmforge.errors import ConfigError, LmforgeError
from lmforge.infer.openai_api import (
    ApiError,
    Generation,
    bad_request,
    parse_messages,
    parse_prompt,
    parse_sampling,
)

CHAT_PAGE = Path(__file__).with_name("chat.html")
RETRY_AFTER_S = 1
SOCKET_TIMEOUT_S = 30  # a client that stops sending or reading frees its thread after this
BODY_TIMEOUT_S = 2.0  # a body that stops arriving this long before its Content-Length is a 400


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class LmforgeServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer holding the model, its limits and the generation slots."""

    daemon_threads = True  # a stuck client never blocks shutdown

    def __init__(
        self,
        address,
        model: nn.Module,
        tokenizer,
        model_name: str,
        max_concurrent: int,
        max_tokens_cap: int,
        max_body_bytes: int,
        queue_timeout_s: float,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ):
        super().__init__(address, Handler)
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.max_concurrent, self.max_tokens_cap = max_concurrent, max_tokens_cap
        self.max_body_bytes, self.queue_timeout_s = max_body_bytes, queue_timeout_s
        self.body_timeout_s = body_timeout_s
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.busy = 0  # generations running (for /health)
        self.busy_lock = threading.Lock()
        self.created = int(time.time())
        self.page = CHAT_PAGE.read_bytes()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class Handler(BaseHTTPRequestHandler):
    server: LmforgeServer
    protocol_version = "HTTP/1.1"  # keep-alive for JSON answers; event streams close
    timeout = SOCKET_TIMEOUT_S
    server_version = "lmforge"
    # headers, body and each event are separate small writes: with Nagle's algorithm and the
    # client's delayed ACK, every answer would wait 40 ms
    disable_nagle_algorithm = True

    # --- routing ------------------------------------------------------------------------
    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        try:
            if path in ("/", "/index.html"):
                self._send(
                    200,
                    self.server.page,
                    "text/html; charset=utf-8",
                    {
                        "Cache-Control": "no-store",
                        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                        "script-src 'unsafe-inline'; connect-src 'self'; img-src data:",
                    },
                )
            elif path == "/health":
                self._send_json(
                    200,
                    {
                        "status": "ok",
                        "model": self.server.model_name,
                        "busy": self.server.busy,
                        "max_concurrent": self.server.max_concurrent,
                        "max_tokens_cap": self.server.max_tokens_cap,
                        "max_body_bytes": self.server.max_body_bytes,
                    },
                )
            elif path == "/v1/models":
                self._send_json(200, {"object": "list", "data": [self._model_card()]})
            elif path.startswith("/v1/models/"):
                name = path.removeprefix("/v1/models/")
                if name != self.server.model_name:
                    raise ApiError(
                        404,
                        f"no model {name!r:.80}; this server serves {self.server.model_name!r}",
                        param="model",
                        code="model_not_found",
                    )
                self._send_json(200, self._model_card())
            elif path in POST_PATHS:
                raise ApiError(405, f"{path} takes POST, not GET", code="method_not_allowed")
            else:
                raise ApiError(
                    404,
                    f"no such path {path!r:.80}; see GET /v1/models, POST "
                    "/v1/chat/completions, POST /v1/completions",
                    code="not_found",
                )
        except ApiError as e:
            self._send_json(e.status, e.body(), e.headers)

    def do_POST(self) -> None:
        path = unquote(urlsplit(self.path).path)
        self.responded = False
        try:
            if path not in POST_PATHS:
                self.close_connection = True  # the body is left unread
                if path in ("/", "/health", "/v1/models"):
                    raise ApiError(405, f"{path} takes GET, not POST", code="method_not_allowed")
                raise ApiError(404, f"no such path {path!r:.80}", code="not_found")
            body = self._read_json()
            sampling = parse_sampling(body, self.server.max_tokens_cap)
            if not isinstance(body.get("stream", False), bool):
                raise bad_request("'stream' must be true or false", "stream")
            chat = path == "/v1/chat/completions"
            try:
                if chat:
                    messages = parse_messages(body.get("messages"))
                    gen = Generation(
                        self.server.model, self.server.tokenizer, sampling, messages=messages
                    )
                else:
                    gen = Generation(
                        self.server.model,
                        self.server.tokenizer,
                        sampling,
                        prompt=parse_prompt(body.get("prompt")),
                    )
            except LmforgeError as e:  # e.g. a tokenizer without the ChatML tokens
                raise bad_request(str(e)) from None
            options = body.get("stream_options") or {}
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            self._run(gen, chat, bool(body.get("stream")), include_usage)
        except ApiError as e:
            self._send_json(e.status, e.body(), e.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client left before its answer was written
        except Exception:  # a bug or a model failure: answer it, log it, keep serving
            traceback.print_exc(file=sys.stderr)
            if not self.responded:
                self._send_json(500, GENERATION_FAILED.body())

    def _method_not_allowed(self) -> None:
        self.close_connection = True  # a body may follow, unread
        e = ApiError(
            405, f"{self.command} is not supported here; use GET or POST", code="method_not_allowed"
        )
        self._send_json(405, e.body())

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _method_not_allowed

    # --- generation ---------------------------------------------------------------------
    def _run(self, gen: Generation, chat: bool, stream: bool, include_usage: bool) -> None:
        server = self.server
        if not server.slots.acquire(timeout=server.queue_timeout_s):
            raise ApiError(
                429,
                f"all {server.max_concurrent} generation slots are busy (this server runs at "
                f"most {server.max_concurrent} at once); retry after {RETRY_AFTER_S} s",
                type="rate_limit_error",
                code="server_busy",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        with server.busy_lock:
            server.busy += 1
        try:
            if stream:
                self._stream(gen, chat, include_usage)
            else:
                self._complete(gen, chat)
        finally:
            with server.busy_lock:
                server.busy -= 1
            server.slots.release()

    def _complete(self, gen: Generation, chat: bool) -> None:
        text = "".join(gen)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice |= {"logprobs": None, "finish_reason": gen.finish_reason}
        body = {
            "id": _new_id(chat),
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.server.model_name,
            "choices": [choice],
            "usage": gen.usage(),
        }
        if gen.stats.prompt_truncated:  # an extension field; OpenAI clients ignore it
            body["lmforge"] = {
                "prompt_truncated": True,
                "note": "the conversation is longer "
                "than the context: its oldest tokens were left out",
            }
        self._send_json(200, body)

    def _stream(self, gen: Generation, chat: bool, include_usage: bool) -> None:
        # The stream's end is the connection's end, so no length or chunked encoding is needed.
        self.close_connection = True
        self.responded = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        head = {
            "id": _new_id(chat),
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.server.model_name,
        }

        def choice(piece: str | None, finish_reason: str | None = None) -> dict:
            if chat:
                delta = {} if piece is None else {"content": piece}
                return {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            return {
                "index": 0,
                "text": piece or "",
                "logprobs": None,
                "finish_reason": finish_reason,
            }

        try:
            if chat:
                first = {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
                self._event(head | {"choices": [first]})
            pieces = iter(gen)
            while True:
                try:
                    piece = next(pieces)
                except StopIteration:
                    break
                except Exception:  # inside generation: tell the client in the stream, go on
                    traceback.print_exc(file=sys.stderr)
                    self._event(GENERATION_FAILED.body())
                    self._event("[DONE]")
                    return
                try:
                    self._event(head | {"choices": [choice(piece)]})
                except (BrokenPipeError, ConnectionResetError, TimeoutError):
                    pieces.close()  # the client went away: stop spending the cores on it
                    return
            self._event(head | {"choices": [choice(None, gen.finish_reason)]})
            if include_usage:
                self._event(head | {"choices": [], "usage": gen.usage()})
            self._event("[DONE]")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away after its answer

    def _event(self, data: dict | str) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        self.wfile.write(f"data: {text}\n\n".encode())

    # --- requests and responses ---------------------------------------------------------
    def _read_json(self) -> dict:
        if self.headers.get_content_type() != "application/json":
            self.close_connection = True
            raise ApiError(
                415,
                "send the body as JSON with 'Content-Type: application/json'",
                code="unsupported_media_type",
            )
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ApiError(
                411, "chunked bodies are not supported; send Content-Length", code="length_required"
            )
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "a POST needs a Content-Length header", code="length_required")
        try:
            length = int(length)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise bad_request(f"Content-Length {length!r:.20} is not a byte count") from None
        if length > self.server.max_body_bytes:
            self.close_connection = True  # the body is left unread, so this connection is done
            raise ApiError(
                413,
                f"the body is {length:,} bytes; this server takes at most "
                f"{self.server.max_body_bytes:,}",
                code="request_too_large",
            )
        raw = self._read_body(length)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
            raise bad_request(
                f"the body is not valid JSON ({str(e)[:80]})", code="invalid_json"
            ) from None
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object", code="invalid_json")
        return body

    def _read_body(self, length: int) -> bytes:
        """The body's `length` bytes, or 400 as soon as the client stops short of them: at the
        end of its input, or after `body_timeout_s` without a byte (a client that sent a short
        body and waits for the answer would otherwise hold the read for the 30 s socket
        timeout, and get a 500)."""
        self.connection.settimeout(self.server.body_timeout_s)
        chunks, got = [], 0
        try:
            while got < length:
                chunk = self.rfile.read1(min(length - got, 1 << 16))
                if not chunk:  # the client closed its side
                    break
                chunks.append(chunk)
                got += len(chunk)
        except TimeoutError:
            pass
        finally:
            self.connection.settimeout(self.timeout)
        if got < length:
            self.close_connection = True  # the rest, if it ever comes, is not a request
            raise bad_request(
                f"the body ended after {got:,} of the {length:,} bytes its Content-Length "
                "announced; send the whole body with a Content-Length that matches it",
                code="incomplete_body",
            )
        return b"".join(chunks)

    def _model_card(self) -> dict:
        return {
            "id": self.server.model_name,
            "object": "model",
            "created": self.server.created,
            "owned_by": "lmforge",
        }

    def _send(
        self, status: int, data: bytes, content_type: str, headers: dict | None = None
    ) -> None:
        self.responded = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (a malformed request line, oversized headers) in the
        # API's error shape too
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # an unparsable request line leaves http.server's
            self.request_version = "HTTP/1.0"  # default, which would drop the status line
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        kind = "invalid_request_error" if code < 500 else "server_error"
        self._send_json(code, ApiError(code, message or phrase, type=kind).body())


POST_PATHS = ("/v1/chat/completions", "/v1/completions")
GENERATION_FAILED = ApiError(
    500,
    "generation failed inside the server (the traceback is in its log); the server goes on serving",
    type="server_error",
    code="generation_failed",
)


def _new_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def check_limits(
    max_concurrent: int,
    max_tokens_cap: int,
    max_body_bytes: int,
    queue_timeout_s: float,
    body_timeout_s: float = BODY_TIMEOUT_S,
) -> None:
    """ConfigError naming the `lmforge serve` flag of a limit out of range."""
    for flag, value in [
        ("--max-concurrent", max_concurrent),
        ("--max-tokens-cap", max_tokens_cap),
        ("--max-body-bytes", max_body_bytes),
    ]:
        if value < 1:
            raise ConfigError(f"{flag} is {value}; it must be at least 1")
    if queue_timeout_s < 0:
        raise ConfigError(f"--queue-timeout-s is {queue_timeout_s}; it must be 0 or more")
    if body_timeout_s <= 0:
        raise ConfigError(f"the body timeout is {body_timeout_s} s; it must be above 0")


def make_server(
    model: nn.Module,
    tokenizer,
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_concurrent: int = 2,
    max_tokens_cap: int = 512,
    max_body_bytes: int = 1_000_000,
    queue_timeout_s: float = 5.0,
    body_timeout_s: float = BODY_TIMEOUT_S,
) -> LmforgeServer:
    """A bound, not yet running server (call `.serve_forever()`; port 0 picks a free port,
    read it from `.server_address[1]` or `.url`). The model is shared by all requests: each
    generation makes its own KV cache, and the weights are only read."""
    check_limits(max_concurrent, max_tokens_cap, max_body_bytes, queue_timeout_s, body_timeout_s)
    model.eval()
    return LmforgeServer(
        (host, port),
        model,
        tokenizer,
        model_name,
        max_concurrent,
        max_tokens_cap,
        max_body_bytes,
        queue_timeout_s,
        body_timeout_s,
    )


def serve(
    run_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_concurrent: int = 2,
    max_tokens_cap: int = 512,
    max_body_bytes: int = 1_000_000,
    queue_timeout_s: float = 5.0,
    device: str = "cpu",
) -> None:
    """Load an artifact and serve it until Ctrl-C; prints the URLs first."""
    check_limits(max_concurrent, max_tokens_cap, max_body_bytes, queue_timeout_s)
    loaded = load_causal_lm(run_dir, device)
    name = str(run_dir).rstrip("/")
    server = make_server(
        loaded.model,
        loaded.tokenizer,
        name,
        host,
        port,
        max_concurrent,
        max_tokens_cap,
        max_body_bytes,
        queue_timeout_s,
    )
    tok = loaded.tokenizer
    if tok.im_start_id is None or tok.im_end_id is None:
        print(
            "note: this tokenizer has no <|im_start|>/<|im_end|>, so chat requests are "
            "refused; /v1/completions works",
            flush=True,
        )
    if host not in ("127.0.0.1", "localhost"):
        print(
            f"warning: listening on {host} without authentication: anyone who can reach "
            "this address can use the model",
            flush=True,
        )
    print(
        f"serving {name} at {server.url}/ (web chat) and {server.url}/v1 (OpenAI API); "
        "Ctrl-C stops",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()
