"""The OpenAI-compatible server (FastAPI + uvicorn), its web chat and the terminal chat,
against tiny untrained models: what is pinned is the wire format, the limits, that batched
decoding gives the single-request answers token for token, that the server runs the model
with the training template (its temperature-0 answers equal lmforge.infer.generate's), and
the classifier endpoint."""

import asyncio
import json
import random
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from helpers import CHROMIUM, CHROMIUM_ARGS, running, tiny_config

from lmforge.artifact import load_causal_lm, save_model_artifact
from lmforge.data.chat import encode_prompt
from lmforge.infer.chat_cli import HELP, repl
from lmforge.infer.generate import SamplingConfig, generate_tokens, stream_chat, stream_text
from lmforge.infer.serve import Limits, make_server
from lmforge.model.heads import HeadConfig, MaskedLM, SequenceClassifier
from lmforge.model.transformer import LanguageModel
from lmforge.tokenizer import Tokenizer

MAX_SEQ_LEN = 128
MAX_TOKENS_CAP = 64
MAX_BODY_BYTES = 20_000
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def tiny_lm(tiny_tokenizer_dir, tmp_path_factory):
    """A saved and re-loaded tiny causal LM (the path `lmforge serve` takes)."""
    tokenizer = Tokenizer.load(tiny_tokenizer_dir)
    torch.manual_seed(0)
    model = LanguageModel(tiny_config(vocab_size=tokenizer.vocab_size, max_seq_len=MAX_SEQ_LEN))
    run = tmp_path_factory.mktemp("serve") / "run"
    save_model_artifact(run, model, kind="causal_lm")
    tokenizer.save(run)
    return load_causal_lm(str(run))


@pytest.fixture(scope="module")
def url(tiny_lm):
    limits = Limits(
        max_batch=4,
        max_queue=8,
        max_tokens_cap=MAX_TOKENS_CAP,
        max_body_bytes=MAX_BODY_BYTES,
        body_timeout_s=0.5,
    )
    server = make_server(tiny_lm.model, tiny_lm.tokenizer, "tiny", port=0, limits=limits)
    with running(server) as base:
        yield base


@pytest.fixture
def client(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


@pytest.fixture
def oai(url):
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def greedy_chat(tiny_lm, messages, max_tokens):
    cfg = SamplingConfig(max_new_tokens=max_tokens, temperature=0)
    return "".join(stream_chat(tiny_lm.model, tiny_lm.tokenizer, messages, cfg))


def assert_error_shape(response, status):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


# --- the wire format ------------------------------------------------------------------------


def test_chat_at_temperature_0_equals_local_generation_with_the_training_template(tiny_lm, client):
    r = client.post(
        "/v1/chat/completions", json={"messages": HELLO, "max_tokens": 12, "temperature": 0}
    )
    assert r.status_code == 200
    out = r.json()
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert out["model"] == "tiny" and isinstance(out["created"], int)
    (choice,) = out["choices"]
    assert choice["message"] == {"role": "assistant", "content": greedy_chat(tiny_lm, HELLO, 12)}
    prompt_ids, _ = encode_prompt(tiny_lm.tokenizer, HELLO, MAX_SEQ_LEN)
    usage = out["usage"]
    assert usage["prompt_tokens"] == len(prompt_ids)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_a_conversation_longer_than_the_context_is_cut_from_the_left_and_says_so(tiny_lm, client):
    long = [{"role": "user", "content": "the house " * 200}, *HELLO]
    r = client.post(
        "/v1/chat/completions", json={"messages": long, "max_tokens": 4, "temperature": 0}
    )
    out = r.json()
    assert r.status_code == 200 and out["lmforge"]["prompt_truncated"] is True
    assert out["usage"]["prompt_tokens"] <= MAX_SEQ_LEN
    # the answer is the one to the conversation's end (HELLO), as the template keeps the tail
    assert out["choices"][0]["message"]["content"] == greedy_chat(tiny_lm, long, 4)
    short = client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 4}).json()
    assert "lmforge" not in short


def test_max_tokens_is_respected_and_reported_as_length(tiny_lm, client):
    tok = tiny_lm.tokenizer
    prompt_ids, _ = encode_prompt(tok, HELLO, MAX_SEQ_LEN)
    cfg = SamplingConfig(
        max_new_tokens=5, temperature=0, stop_token_ids=[tok.eos_id, tok.im_end_id]
    )
    local = list(generate_tokens(tiny_lm.model, prompt_ids, cfg))
    assert len(local) == 5, "the fixture model ends its turn early; the test needs another seed"
    for path, body in [
        ("/v1/chat/completions", {"messages": HELLO}),
        ("/v1/completions", {"prompt": "The house"}),
    ]:
        r = client.post(path, json=body | {"max_tokens": 5, "temperature": 0})
        out = r.json()
        assert out["usage"]["completion_tokens"] == 5, path
        assert out["choices"][0]["finish_reason"] == "length", path


def test_stop_string_cuts_the_answer_and_finishes_with_stop(tiny_lm, client):
    full = greedy_chat(tiny_lm, HELLO, 12)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    r = client.post(
        "/v1/chat/completions",
        json={"messages": HELLO, "max_tokens": 12, "temperature": 0, "stop": [stop]},
    )
    (choice,) = r.json()["choices"]
    assert choice["message"]["content"] == full[: full.find(stop)]
    assert choice["finish_reason"] == "stop"


def test_seed_makes_sampling_reproducible_and_matches_local_sampling(tiny_lm, client):
    body = {"messages": HELLO, "max_tokens": 10, "temperature": 1.0, "seed": 7}
    first, second = (client.post("/v1/chat/completions", json=body).json() for _ in range(2))
    text = first["choices"][0]["message"]["content"]
    assert text == second["choices"][0]["message"]["content"]
    # top_k is off unless asked for, as in OpenAI's API
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=None, seed=7)
    assert text == "".join(stream_chat(tiny_lm.model, tiny_lm.tokenizer, HELLO, cfg))


def test_openai_client_chat_plain_and_streamed(tiny_lm, oai):
    expected = greedy_chat(tiny_lm, HELLO, 12)
    out = oai.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, temperature=0)
    assert out.choices[0].message.content == expected
    assert out.usage.completion_tokens <= 12

    chunks = list(
        oai.chat.completions.create(
            model="tiny",
            messages=HELLO,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-2].choices[0].finish_reason == out.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == out.usage.total_tokens
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_openai_client_completions_equal_stream_text(tiny_lm, oai):
    prompt = "The meaning of"
    cfg = SamplingConfig(max_new_tokens=10, temperature=0)
    expected = "".join(stream_text(tiny_lm.model, tiny_lm.tokenizer, prompt, cfg))
    out = oai.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
    assert out.object == "text_completion" and out.choices[0].text == expected
    assert out.usage.prompt_tokens == len(tiny_lm.tokenizer.encode(prompt, add_bos=True))
    streamed = oai.completions.create(
        model="tiny", prompt=prompt, max_tokens=10, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_models_health_and_page(oai, client):
    (model,) = oai.models.list().data
    assert model.id == "tiny" and model.owned_by == "lmforge"
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["max_tokens_cap"] == MAX_TOKENS_CAP
    assert health["kind"] == "causal_lm" and health["max_batch"] == 4
    schema = client.get("/openapi.json").json()  # what /docs shows
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(schema["paths"])
    assert "ChatCompletionRequest" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/v1/chat/completions" in page.text


# --- bad requests ---------------------------------------------------------------------------

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
BAD_REQUESTS = [
    # (method, path, body: bytes or a JSON-able object, status, param)
    ("POST", CHAT, b"{not json", 400, None),
    ("POST", CHAT, b"\xff\xfe\x00garbage", 400, None),
    ("POST", CHAT, b"[" * 10_000, 400, None),
    ("POST", CHAT, b"[1, 2]", 422, None),
    ("POST", CHAT, {}, 422, "messages"),
    ("POST", CHAT, {"messages": []}, 422, "messages"),
    ("POST", CHAT, {"messages": "hello"}, 422, "messages"),
    ("POST", CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, 422, "messages[0].role"),
    ("POST", CHAT, {"messages": [{"role": "user", "content": 5}]}, 422, "messages[0].content"),
    ("POST", CHAT, {"messages": [{"role": "user"}]}, 422, "messages[0].content"),
    ("POST", CHAT, {"messages": ["hi"]}, 422, "messages[0]"),
    ("POST", CHAT, {"messages": HELLO, "model": "gpt-4"}, 404, "model"),
    ("POST", CHAT, {"messages": HELLO, "max_tokens": -1}, 422, "max_tokens"),
    ("POST", CHAT, {"messages": HELLO, "max_tokens": 0}, 422, "max_tokens"),
    ("POST", CHAT, {"messages": HELLO, "max_tokens": "5"}, 422, "max_tokens"),
    ("POST", CHAT, {"messages": HELLO, "max_tokens": 2.5}, 422, "max_tokens"),
    ("POST", CHAT, {"messages": HELLO, "max_tokens": True}, 422, "max_tokens"),
    ("POST", CHAT, {"messages": HELLO, "max_tokens": MAX_TOKENS_CAP + 1}, 422, "max_tokens"),
    ("POST", CHAT, {"messages": HELLO, "temperature": "hot"}, 422, "temperature"),
    ("POST", CHAT, {"messages": HELLO, "temperature": -0.5}, 422, "temperature"),
    ("POST", CHAT, {"messages": HELLO, "temperature": 5}, 422, "temperature"),
    ("POST", CHAT, {"messages": HELLO, "top_p": 0}, 422, "top_p"),
    ("POST", CHAT, {"messages": HELLO, "stop": 5}, 422, "stop"),
    ("POST", CHAT, {"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
    ("POST", CHAT, {"messages": HELLO, "n": 2}, 422, "n"),
    ("POST", CHAT, {"messages": HELLO, "seed": -1}, 422, "seed"),
    ("POST", CHAT, {"messages": HELLO, "stream": "yes"}, 422, "stream"),
    ("POST", COMPLETIONS, {}, 422, "prompt"),
    ("POST", COMPLETIONS, {"prompt": ["a", "b"]}, 422, "prompt"),
    ("POST", COMPLETIONS, {"prompt": "word " * 300}, 422, "prompt"),  # longer than the context
    ("POST", CHAT, {"messages": [{"role": "user", "content": "x" * MAX_BODY_BYTES}]}, 413, None),
    ("POST", "/v1/nope", {}, 404, None),
    ("POST", "/v1/classify", {"input": "a"}, 404, None),  # an LM server: no such endpoint
    ("GET", "/nope", None, 404, None),
    ("GET", "/v1/models/gpt-4", None, 404, "model"),
    ("GET", CHAT, None, 405, None),
    ("DELETE", "/v1/models", None, 405, None),
]


def _send(client, method, path, body, content_type="application/json"):
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    return client.request(method, path, content=content, headers={"Content-Type": content_type})


@pytest.mark.parametrize("method,path,body,status,param", BAD_REQUESTS)
def test_bad_requests_get_openai_shaped_errors(client, method, path, body, status, param):
    error = assert_error_shape(_send(client, method, path, body), status)
    assert error["param"] == param
    if param:  # the message names the field, so a person can find it
        assert param in error["message"]


def test_body_must_be_declared_json(client):
    r = _send(client, "POST", CHAT, {"messages": HELLO}, content_type="text/plain")
    assert_error_shape(r, 415)


def test_max_tokens_above_the_cap_names_the_cap(client):
    r = client.post(CHAT, json={"messages": HELLO, "max_tokens": 10_000})
    error = assert_error_shape(r, 422)
    assert error["code"] == "max_tokens_too_large" and str(MAX_TOKENS_CAP) in error["message"]


def _raw_exchange(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    return reply


def _post_head(url: str, length: int) -> bytes:
    host = url.removeprefix("http://")
    return (
        f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_a_body_shorter_than_its_content_length_is_400_not_a_hang(url, client):
    """The client sends 14 of the 100 bytes it announced, then waits for the answer. The
    server answers 400 after its body timeout (0.5 s here); the 5 s client timeout fails the
    test if it waits for the rest forever."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(_post_head(url, 100) + b'{"messages": [')
        reply = b""
        while chunk := s.recv(65536):  # TimeoutError after 5 s of silence; the answer closes
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), reply[:200]
    error = json.loads(body)["error"]
    assert error["code"] == "incomplete_body" and "14 of the 100 bytes" in error["message"]
    # a client that gives up half way and closes: the server goes on serving
    _raw_exchange(url, _post_head(url, 100) + b"{")
    assert client.get("/health").json()["status"] == "ok"


def test_a_body_over_the_size_cap_is_413_and_the_cap_is_reported(url, client):
    r = client.post(CHAT, json={"messages": [{"role": "user", "content": "x" * MAX_BODY_BYTES}]})
    error = assert_error_shape(r, 413)
    assert error["code"] == "request_too_large" and f"{MAX_BODY_BYTES:,}" in error["message"]
    assert client.get("/health").json()["max_body_bytes"] == MAX_BODY_BYTES
    # a 10 MB body without a Content-Length (chunked) is counted as it comes and cut off
    chunks = (b'{"messages": [{"role": "user", "content": "' + b"x" * 1_000_000 for _ in range(10))
    big = client.post(CHAT, content=chunks, headers={"Content-Type": "application/json"})
    assert_error_shape(big, 413)
    ok = client.post(CHAT, json={"messages": HELLO, "max_tokens": 2})
    assert ok.status_code == 200


def test_serve_flags_set_the_limits_and_bad_ones_are_usage_errors(capsys):
    from lmforge.cli import build_parser, main

    args = build_parser().parse_args(
        ["serve", "run", "--max-body-bytes", "5000", "--max-queue", "3", "--max-tokens-cap", "9"]
    )
    assert (args.max_body_bytes, args.max_queue, args.max_tokens_cap) == (5000, 3, 9)
    for flag in ("--max-body-bytes", "--max-batch", "--max-queue", "--max-tokens-cap"):
        assert main(["serve", "no/such/run", flag, "0"]) == 2  # refused before loading
        assert f"{flag} is 0" in capsys.readouterr().err


def test_server_survives_100_malformed_requests(url, client):
    rng = random.Random(0)
    statuses = []
    for i in range(100):
        kind = i % 4
        if kind == 0:  # one of the bad requests above
            method, path, body, _, _ = BAD_REQUESTS[i % len(BAD_REQUESTS)]
            statuses.append(_send(client, method, path, body).status_code)
        elif kind == 1:  # random bytes as a JSON body
            noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            statuses.append(_send(client, "POST", CHAT, noise).status_code)
        elif kind == 2:  # valid JSON of the wrong shape
            junk = rng.choice([None, 1, "s", [HELLO], {"messages": [None]}, {"messages": {}}])
            statuses.append(_send(client, "POST", CHAT, json.dumps(junk).encode()).status_code)
        else:  # not HTTP at all, or broken HTTP
            junk = rng.choice(
                [
                    b"HELLO\r\n\r\n",
                    b"GET / HTTP/1.1 extra\r\n\r\n",
                    b"POST /v1/completions HTTP/1.1\r\nContent-Length: x\r\n"
                    b"Content-Type: application/json\r\n\r\n",
                ]
            )
            reply = _raw_exchange(url, junk)
            statuses.append(int(reply.split()[1]) if reply.startswith(b"HTTP/") else 400)
    assert all(400 <= s < 500 for s in statuses), statuses
    r = client.post(CHAT, json={"messages": HELLO, "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3


# --- batched decoding -----------------------------------------------------------------------


class ControlledModel(LanguageModel):
    """A tiny LM whose forward pass can be held (to keep requests in the engine for as long as
    a test needs) or made to fail."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.entered, self.release = threading.Event(), threading.Event()
        self.release.set()
        self.fail = False
        self.calls = 0
        self.batch_sizes: list[int] = []

    def forward(self, input_ids, *args, **kwargs):
        self.calls += 1
        self.batch_sizes.append(input_ids.shape[0])
        self.entered.set()
        self.release.wait(10)
        if self.fail:
            raise RuntimeError("injected failure inside the model")
        return super().forward(input_ids, *args, **kwargs)


def controlled_server(tokenizer, init_std=0.02, **limits):
    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=tokenizer.vocab_size, max_seq_len=64, init_std=init_std)
    model = ControlledModel(cfg)
    server = make_server(model.eval(), tokenizer, "held", port=0, limits=Limits(**limits))
    return model, server


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


PROMPTS = [
    [{"role": "user", "content": "hi"}],
    HELLO,
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "why?"}],
    [{"role": "user", "content": "tell me about the house on the hill, and its garden"}],
    [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "yes"}, *HELLO],
]


def test_concurrent_requests_share_forward_passes_and_equal_single_request_answers(tiny_lm):
    """Five conversations of different lengths are held until all five wait in the engine,
    then decoded together: each answer equals its greedy single-request answer token for
    token, and the decode passes carry several rows."""
    # large weights: logits that move with every position and key, so that any row seeing
    # the wrong keys or position changes its tokens
    model, server = controlled_server(tiny_lm.tokenizer, max_batch=8, max_queue=8, init_std=0.5)
    cfg = SamplingConfig(max_new_tokens=10, temperature=0)
    expected = ["".join(stream_chat(model, tiny_lm.tokenizer, m, cfg)) for m in PROMPTS]
    assert len(set(expected)) == len(PROMPTS)
    answers = [None] * len(PROMPTS)
    with running(server) as url, httpx.Client(base_url=url, timeout=30) as client:
        model.release.clear()
        model.entered.clear()

        def ask(i):
            body = {"messages": PROMPTS[i], "max_tokens": 10, "temperature": 0}
            answers[i] = client.post(CHAT, json=body).json()["choices"][0]["message"]["content"]

        threads = [threading.Thread(target=ask, args=(0,))]
        threads[0].start()
        assert model.entered.wait(10)  # the first prefill is held
        threads += [threading.Thread(target=ask, args=(i,)) for i in range(1, len(PROMPTS))]
        for t in threads[1:]:
            t.start()
        wait_for(lambda: client.get("/health").json()["waiting"] == len(PROMPTS) - 1)
        model.release.set()
        for t in threads:
            t.join(30)
        steps = client.get("/health").json()["decode_steps"]
    assert answers == expected
    assert max(model.batch_sizes) == len(PROMPTS)  # one pass decoded all five
    assert steps < sum(len(tiny_lm.tokenizer.encode(a)) for a in answers)


def test_100_requests_at_once_with_a_queue_of_16_get_429_at_once_and_the_rest_answers(tiny_lm):
    model, server = controlled_server(tiny_lm.tokenizer, max_batch=4, max_queue=16)
    body = {"messages": HELLO, "max_tokens": 2, "temperature": 0}
    with running(server) as url:
        model.release.clear()  # nothing can finish until the model is released
        replies, answered_while_held = _burst(url, body, model, n=100, expect_early=84)
    assert sorted(answered_while_held) == [429] * 84  # the refusals did not wait for a slot
    statuses = [r.status_code for r in replies]
    assert statuses.count(200) == 16 and statuses.count(429) == 84
    refused = next(r for r in replies if r.status_code == 429)
    error = assert_error_shape(refused, 429)
    assert error["code"] == "server_busy" and refused.headers["Retry-After"] == "1"


def _burst(url, body, model, n, expect_early):
    """n concurrent POSTs while the model is held; returns every reply, and the statuses of
    those answered before the model was released."""

    async def burst():
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as c:
            tasks = [asyncio.create_task(c.post(CHAT, json=body)) for _ in range(n)]
            deadline = time.monotonic() + 20
            while sum(t.done() for t in tasks) < expect_early and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)  # anything else that would come back early
            early = [t.result().status_code for t in tasks if t.done()]
            model.release.set()
            return await asyncio.gather(*tasks), early

    return asyncio.run(burst())


def test_an_error_inside_generation_is_a_500_or_an_error_event_and_the_server_lives(tiny_lm):
    model, server = controlled_server(tiny_lm.tokenizer, max_batch=2, max_queue=4)
    body = {"messages": HELLO, "max_tokens": 3, "temperature": 0}
    with running(server) as url, httpx.Client(base_url=url, timeout=30) as client:
        model.fail = True
        error = assert_error_shape(client.post(CHAT, json=body), 500)
        assert error["type"] == "server_error" and error["code"] == "generation_failed"
        with client.stream("POST", CHAT, json=body | {"stream": True}) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
        assert json.loads(events[1])["error"]["code"] == "generation_failed"
        assert events[-1] == "[DONE]"
        model.fail = False
        assert client.post(CHAT, json=body).status_code == 200
        assert client.get("/health").json()["active"] == 0


def test_a_client_that_leaves_mid_stream_frees_its_slot(tiny_lm):
    model, server = controlled_server(tiny_lm.tokenizer, max_batch=1, max_queue=1)
    body = {"messages": HELLO, "max_tokens": 60, "temperature": 0, "stream": True}
    with running(server) as url, httpx.Client(base_url=url, timeout=30) as client:
        model.release.clear()  # hold generation until the client has gone
        with client.stream("POST", CHAT, json=body) as r:
            first = next(r.iter_lines())  # the role chunk, sent before generation starts
            assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["role"]
        model.release.set()
        wait_for(lambda: client.get("/health").json()["active"] == 0)
        assert model.calls < 40  # not the 60 tokens asked for
        # the one slot is free again: the next request is served, not refused
        again = client.post(CHAT, json=body | {"stream": False, "max_tokens": 2})
        assert again.status_code == 200


def test_a_stream_outlives_the_body_timeout(tiny_lm):
    """The body timeout is for a body that stops arriving, not for the answer: a stream
    that takes longer than it (a slow model) runs to its end."""
    model, server = controlled_server(tiny_lm.tokenizer, max_batch=1, body_timeout_s=0.1)
    body = {"messages": HELLO, "max_tokens": 3, "temperature": 0, "stream": True}
    with running(server) as url, httpx.Client(base_url=url, timeout=30) as client:
        model.release.clear()
        with client.stream("POST", CHAT, json=body) as r:
            lines = r.iter_lines()
            next(lines)  # the role chunk; the model is held for 5 body timeouts
            time.sleep(0.5)
            model.release.set()
            events = [line[6:] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and "error" not in events[-2]


def test_shutdown_lets_an_answer_in_flight_finish(tiny_lm):
    model, server = controlled_server(tiny_lm.tokenizer, max_batch=2, max_queue=2)
    body = {"messages": HELLO, "max_tokens": 5, "temperature": 0, "stream": True}
    url = server.start()
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            model.release.clear()
            with client.stream("POST", CHAT, json=body) as r:
                lines = r.iter_lines()
                next(lines)  # the stream has begun
                stopper = threading.Thread(target=server.stop)
                stopper.start()  # Ctrl-C: stop accepting, let this answer finish
                time.sleep(0.2)
                model.release.set()
                events = [line[6:] for line in lines if line.startswith("data: ")]
            stopper.join(30)
    finally:
        model.release.set()
        server.stop()
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["choices"][0]["finish_reason"] in ("length", "stop")
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=2)


# --- classifiers behind the API -------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_url(tiny_lm):
    torch.manual_seed(0)
    tok = tiny_lm.tokenizer
    cfg = tiny_config(vocab_size=tok.vocab_size, max_seq_len=32, pad_token_id=tok.pad_id)
    labels = ["billing", "fraud", "loans"]
    model = SequenceClassifier(cfg, HeadConfig(num_labels=3, label_names=labels)).eval()
    settings = {"max_length": 16, "padding_side": "left", "temperature": 2.0}
    limits = Limits(max_batch=8, max_queue=8, batch_wait_ms=50)
    server = make_server(model, tok, "cls", port=0, limits=limits, classifier=settings)
    with running(server) as url:
        yield url, model, tok


TEXTS = ["my card was charged twice", "a loan", "x " * 40, "someone stole my identity"]


def test_classify_returns_labels_and_probabilities_after_the_temperature(classifier_url):
    from lmforge.data.tasks import encode_examples

    url, model, tok = classifier_url
    r = httpx.post(url + "/v1/classify", json={"input": TEXTS, "top_k": 2}, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == "cls" and out["temperature"] == 2.0
    ids, truncated = encode_examples(tok, TEXTS, 16)
    with torch.no_grad():  # each text alone, unpadded: the batch's padding changes nothing
        logits = torch.cat([model(torch.tensor([x])) for x in ids])
    probs = torch.softmax(logits / 2.0, -1)
    for row, p, cut in zip(out["data"], probs, truncated):
        assert [s["label"] for s in row["top"]] == [
            model.head_cfg.label_names[i] for i in p.argsort(descending=True)[:2]
        ]
        assert row["label"] == row["top"][0]["label"] and len(row["top"]) == 2
        assert row["probability"] == pytest.approx(float(p.max()), abs=1e-5)
        assert row["truncated"] == cut
    assert out["data"][2]["truncated"] and not out["data"][1]["truncated"]


def test_concurrent_classify_requests_share_batches(classifier_url):
    url, _, _ = classifier_url
    before = httpx.get(url + "/health").json()["batches"]
    replies = []

    def ask(text):
        replies.append(httpx.post(url + "/v1/classify", json={"input": text}, timeout=30))

    threads = [threading.Thread(target=ask, args=(t,)) for t in TEXTS * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.status_code for r in replies] == [200] * 8
    assert httpx.get(url + "/health").json()["batches"] - before < 8  # some texts shared one


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({"input": []}, 422, "input"),
        ({"input": [1, 2]}, 422, "input"),
        ({}, 422, "input"),
        ({"input": "a", "top_k": 0}, 422, "top_k"),
        ({"input": "a", "model": "other"}, 404, "model"),
        ({"input": ["a"] * 65}, 422, "input"),  # more than 8 batches' worth in one request
    ],
)
def test_classify_bad_requests(classifier_url, body, status, param):
    url, _, _ = classifier_url
    error = assert_error_shape(httpx.post(url + "/v1/classify", json=body, timeout=30), status)
    assert error["param"] == param
    assert httpx.post(url + "/v1/chat/completions", json={"messages": HELLO}).status_code == 404


# --- the terminal chat ----------------------------------------------------------------------


def test_repl_keeps_the_conversation_and_obeys_its_commands(tiny_lm):
    lines = iter(
        ["hello there", "/system Be brief.", "again", "", "/reset", "/help", "/bogus", "hi"]
    )
    prompts = []

    def scripted_input(prompt):
        prompts.append(prompt)
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    shown = []
    sampling = SamplingConfig(max_new_tokens=6, temperature=0)
    repl(tiny_lm.model, tiny_lm.tokenizer, sampling, input_fn=scripted_input, write=shown.append)
    text = "".join(shown)

    def answer(messages):
        return greedy_chat(tiny_lm, messages, 6)

    first = answer(HELLO)
    system = {"role": "system", "content": "Be brief."}
    second = answer(
        [
            system,
            *HELLO,
            {"role": "assistant", "content": first},
            {"role": "user", "content": "again"},
        ]
    )
    third = answer([system, {"role": "user", "content": "hi"}])  # /reset kept the system prompt
    expected_in_order = [
        f"assistant> {first}\n",
        "(system prompt set)",
        f"assistant> {second}\n",
        "(conversation forgotten)",
        HELP,
        "unknown command /bogus",
        f"assistant> {third}\n",
    ]
    at = 0
    for piece in expected_in_order:
        at = text.index(piece, at) + len(piece)  # raises if missing or out of order
    assert len(prompts) == 9 and text.endswith("\n")  # the 9th read hit end of input


def test_repl_quit_stops_reading(tiny_lm):
    lines = iter(["/quit", "never read"])
    repl(
        tiny_lm.model,
        tiny_lm.tokenizer,
        SamplingConfig(),
        input_fn=lambda _: next(lines),
        write=lambda _: None,
    )
    assert next(lines) == "never read"


# --- the web chat in a real browser ---------------------------------------------------------


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"the web-chat test needs Chromium at {CHROMIUM} (apt-get install chromium; "
    "scripts/setup.sh installs it with WITH_BROWSER=1, as CI does)",
)
def test_web_chat_streams_answers_and_keeps_the_conversation(tiny_lm, url, tmp_path):
    from playwright.sync_api import sync_playwright

    first = greedy_chat(tiny_lm, HELLO, 12)
    second = greedy_chat(
        tiny_lm,
        [*HELLO, {"role": "assistant", "content": first}, {"role": "user", "content": "and then"}],
        12,
    )
    page_errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on("console", lambda m: m.type == "error" and page_errors.append(m.text))
            page.set_default_timeout(60_000)  # a loaded 2-core CI machine starts Chromium slowly
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('tiny')")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "12")
            answers = []
            for i, message in enumerate(["hello there", "and then"]):
                page.fill("#input", message)
                page.click("#send")
                done = f".message.assistant[data-done] >> nth={i}"
                page.wait_for_selector(done, timeout=60_000)
                answers.append(page.locator(done).locator(".text").text_content())
            page.screenshot(path=str(tmp_path / "web-chat.png"))
            page.click("#reset")
            assert page.locator(".message").count() == 0
        finally:
            browser.close()
    assert answers == [first, second]
    assert page_errors == []
    assert (tmp_path / "web-chat.png").stat().st_size > 0


def test_serve_reads_a_classifier_runs_settings_and_calibrated_temperature(
    tmp_path, tiny_lm, capsys
):
    from lmforge.cli import main
    from lmforge.verbs.use import served_classifier

    torch.manual_seed(0)
    tok = tiny_lm.tokenizer
    cfg = tiny_config(vocab_size=tok.vocab_size, max_seq_len=64, pad_token_id=tok.pad_id)
    model = SequenceClassifier(cfg, HeadConfig(num_labels=2, label_names=["a", "b"]))
    run = tmp_path / "cls"
    save_model_artifact(run, model, kind="sequence_classifier")
    tok.save(run)
    (run / "config.yaml").write_text("task:\n  max_length: 24\npadding_side: left\n")
    (run / "eval" / "val").mkdir(parents=True)
    (run / "eval" / "val" / "metrics.json").write_text(json.dumps({"temperature": 1.7}))
    from lmforge.artifact import load

    settings = served_classifier(load(run))
    assert settings == {"max_length": 24, "padding_side": "left", "temperature": 1.7}
    (run / "eval" / "val" / "metrics.json").unlink()  # not calibrated: T = 1, and it says so
    assert served_classifier(load(run))["temperature"] == 1.0
    # an encoder without a head is neither a chat model nor a classifier: a clear refusal
    enc = tmp_path / "mlm"
    save_model_artifact(enc, MaskedLM(tiny_config(vocab_size=tok.vocab_size)), "masked_lm")
    tok.save(enc)
    assert main(["serve", str(enc)]) != 0
    assert "is a masked_lm artifact; serve takes a causal LM" in capsys.readouterr().err
