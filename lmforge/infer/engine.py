"""Batched decoding: concurrent generations share the model's forward passes.

At batch 1 a decode step reads every weight to produce one token, so most of its time is
memory traffic; sixteen sequences decoded in the same pass read the weights once for sixteen
tokens. One thread owns the model and loops:

    admit    waiting requests take free slots of one preallocated KV cache; each prompt is
             prefilled on its own, into its slot (the single-request code path, so its first
             token is the one `generate_tokens` gives)
    decode   one forward pass over the slots in use: every row one new token at its own
             position (KVCache.lengths), its own sampling settings and random generator
    retire   a row that hit a stop token, its max_tokens or the context end, or whose client
             left, frees its slot at once; the next waiting request takes it

Requests join and leave between decode steps, so a short answer is never held back by a long
one (continuous batching, Orca, Yu et al. 2022). Greedy outputs equal the single-request ones
token for token (tests/test_serve.py): the rows are independent, and the mask hides each
row's keys beyond its own position.

Each request hears about its tokens through `emit(kind, value)`, called on the engine's
thread: ("token", id), then ("end", finish_reason) or ("error", exception).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lmforge.infer.generate import SamplingConfig, sample_next
from lmforge.model.transformer import KVCache


class QueueFull(Exception):
    """The engine already holds `max_queue` requests (running and waiting)."""


@dataclass
class Request:
    """One generation: its prompt, how to sample, and where its tokens go."""

    prompt_ids: list[int]
    cfg: SamplingConfig
    emit: Callable[[str, object], None]
    completion_tokens: int = 0
    cancelled: bool = False
    slot: int | None = None
    last: int = 0  # the token the next decode step feeds
    generator: torch.Generator | None = field(default=None, repr=False)


class DecodeEngine:
    """A thread decoding up to `max_batch` sequences together, each in a KV-cache slot of
    `context` positions; at most `max_queue` requests held at once (running + waiting)."""

    def __init__(self, model: nn.Module, max_batch: int, context: int, max_queue: int):
        if max_batch < 1 or max_queue < 1 or context < 2:
            raise ValueError("max_batch and max_queue must be >= 1 and context >= 2")
        self.model, self.max_batch, self.context = model.eval(), max_batch, context
        self.max_queue = max(max_queue, max_batch)
        self.cache = model.new_cache(max_batch, context)
        self.device = self.cache.k.device
        self.slots: list[Request | None] = [None] * max_batch
        self.waiting: deque[Request] = deque()
        self.lock = threading.Condition()
        self.running = True
        self.steps = 0  # decode passes run (for /health and the tests)
        self.thread = threading.Thread(target=self._loop, name="lmforge-decode", daemon=True)
        self.thread.start()

    # --- called from the server's threads -------------------------------------------------
    def submit(self, req: Request) -> None:
        if not 0 < len(req.prompt_ids) < self.context:
            raise ValueError(f"a prompt must hold 1 to {self.context - 1} tokens")
        with self.lock:
            if not self.running:
                raise QueueFull("the server is shutting down")
            if self.active + len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are already running or waiting")
            if req.cfg.seed is not None:
                req.generator = torch.Generator(device=self.device).manual_seed(req.cfg.seed)
            self.waiting.append(req)
            self.lock.notify()

    def cancel(self, req: Request) -> None:
        """Stop a request (its client left): it leaves its slot before the next step."""
        with self.lock:
            req.cancelled = True
            if req in self.waiting:
                self.waiting.remove(req)

    @property
    def active(self) -> int:
        return sum(r is not None for r in self.slots)

    def shutdown(self) -> None:
        """Stop the loop; requests still running or waiting end with finish_reason "cancelled"."""
        with self.lock:
            self.running = False
            self.lock.notify()
        self.thread.join(30)
        for req in [*self.waiting, *(r for r in self.slots if r is not None)]:
            req.emit("end", "cancelled")
        self.waiting.clear()
        self.slots = [None] * self.max_batch

    # --- the engine's thread --------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.lock:
                while self.running and not self.waiting and not self.active:
                    self.lock.wait()
                if not self.running:
                    return
                admitted = self._take_waiting()
            try:
                with torch.inference_mode():
                    for req in admitted:
                        self._prefill(req)
                    if self.active:
                        self._decode_step()
            except Exception as e:  # a model failure ends the requests in flight, not the server
                traceback.print_exc()
                for i, req in enumerate(self.slots):
                    if req is not None:
                        req.emit("error", e)
                        self.slots[i] = None

    def _take_waiting(self) -> list[Request]:
        admitted = []
        while self.waiting and None in self.slots:
            req = self.waiting.popleft()
            req.slot = self.slots.index(None)  # the lowest free slot keeps the batch's rows dense
            self.slots[req.slot] = req
            admitted.append(req)
        return admitted

    def _prefill(self, req: Request) -> None:
        if req.cancelled:
            self.slots[req.slot] = None
            return
        s = req.slot
        cache = KVCache(self.cache.k[:, s : s + 1], self.cache.v[:, s : s + 1])
        x = torch.tensor([req.prompt_ids], device=self.device)
        logits = self.model(x, cache=cache)[:, -1]
        self._advance(req, logits)

    def _decode_step(self) -> None:
        n = max(i for i, r in enumerate(self.slots) if r is not None) + 1
        rows = self.slots[:n]
        # a free slot inside the range decodes a dummy token at position 0: wasted work, but
        # no copying of caches to keep the live rows together
        lengths = [len(r.prompt_ids) + r.completion_tokens - 1 if r else 0 for r in rows]
        tokens = [[r.last if r else 0] for r in rows]
        cache = KVCache(
            self.cache.k[:, :n],
            self.cache.v[:, :n],
            lengths=torch.tensor(lengths, device=self.device),
        )
        logits = self.model(torch.tensor(tokens, device=self.device), cache=cache)[:, -1]
        self.steps += 1
        for i, req in enumerate(rows):
            if req is not None:
                self._advance(req, logits[i : i + 1])

    def _advance(self, req: Request, logits: torch.Tensor) -> None:
        """Sample the request's next token from its logits (1, V), emit it, or retire it."""
        if req.cancelled:
            self.slots[req.slot] = None
            return
        nxt = int(sample_next(logits, req.cfg, req.generator)[0])
        if nxt in req.cfg.stop_token_ids:
            return self._retire(req, "stop")
        req.completion_tokens += 1
        req.last = nxt
        req.emit("token", nxt)
        used = len(req.prompt_ids) + req.completion_tokens
        if req.completion_tokens >= req.cfg.max_new_tokens or used >= self.context:
            self._retire(req, "length")

    def _retire(self, req: Request, reason: str) -> None:
        self.slots[req.slot] = None
        req.emit("end", reason)


# --------------------------------------------------------------------------------------------
# Classification: dynamic batching
# --------------------------------------------------------------------------------------------


class ClassifyBatcher:
    """Texts from concurrent requests classified in shared forward passes.

    The thread takes the first waiting request, then waits up to `max_wait_s` for more until
    `max_batch` texts are gathered, runs them as padded batches of at most `max_batch`
    (`fn(texts) -> (probabilities, truncated)`), and hands each request its rows via
    `done(result)` (or `done(exception)`). With `max_wait_s` 0 (the default) a request alone
    runs at once, and the texts that arrive while a pass runs go together in the next: under
    load the batches fill by themselves; a wait buys fuller batches with latency.
    """

    def __init__(self, fn: Callable, max_batch: int, max_wait_s: float, max_queue: int):
        self.fn, self.max_batch, self.max_wait_s = fn, max_batch, max_wait_s
        self.max_queue = max_queue
        self.waiting: deque[tuple[list[str], Callable]] = deque()
        self.lock = threading.Condition()
        self.running = True
        self.batches = 0
        self.thread = threading.Thread(target=self._loop, name="lmforge-classify", daemon=True)
        self.thread.start()

    @property
    def pending(self) -> int:
        return len(self.waiting)

    def submit(self, texts: list[str], done: Callable) -> None:
        with self.lock:
            if not self.running:
                raise QueueFull("the server is shutting down")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are already waiting")
            self.waiting.append((texts, done))
            self.lock.notify()

    def shutdown(self) -> None:
        with self.lock:
            self.running = False
            self.lock.notify()
        self.thread.join(30)
        for _, done in self.waiting:
            done(QueueFull("the server stopped"))
        self.waiting.clear()

    def _loop(self) -> None:
        while True:
            with self.lock:
                while self.running and not self.waiting:
                    self.lock.wait()
                if not self.running:
                    return
                deadline = time.monotonic() + self.max_wait_s
                while (
                    self.running
                    and sum(len(t) for t, _ in self.waiting) < self.max_batch
                    and (left := deadline - time.monotonic()) > 0
                ):
                    self.lock.wait(left)
                taken = [self.waiting.popleft()]
                n = len(taken[0][0])
                while self.waiting and n + len(self.waiting[0][0]) <= self.max_batch:
                    n += len(self.waiting[0][0])
                    taken.append(self.waiting.popleft())
            self._run(taken)

    def _run(self, taken: list[tuple[list[str], Callable]]) -> None:
        texts = [t for ts, _ in taken for t in ts]
        try:
            parts = [
                self.fn(texts[i : i + self.max_batch]) for i in range(0, len(texts), self.max_batch)
            ]
            self.batches += len(parts)
            probs = np.concatenate([p for p, _ in parts])
            truncated = [c for _, cut in parts for c in cut]
        except Exception as e:
            traceback.print_exc()
            for _, done in taken:
                done(e)
            return
        at = 0
        for ts, done in taken:
            done((probs[at : at + len(ts)], truncated[at : at + len(ts)]))
            at += len(ts)
