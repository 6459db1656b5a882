"""Sampling with a KV cache: greedy, temperature, top-k, top-p, stop strings, streaming."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from pydantic import Field
from torch import nn

from lmforge.config import Section
from lmforge.data.chat import encode_prompt
from lmforge.errors import ConfigError


@dataclass
class SamplingConfig:
    max_new_tokens: int = 100
    temperature: float = 0.8  # 0 means greedy
    top_k: int | None = 50
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)


@dataclass
class GenerationStats:
    """Filled in while a generation runs (the server's usage and finish_reason)."""

    prompt_tokens: int = 0  # after any cut to fit the context
    completion_tokens: int = 0
    finish_reason: str = "length"  # "stop": a stop token or string; "length": a limit
    prompt_truncated: bool = False  # the conversation outgrew the context: its oldest tokens cut


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Mask all but the top-k tokens, then all beyond the top-p probability mass (Holtzman et al. 2020)."""
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the first always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


def sample_next(
    logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,)."""
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / cfg.temperature, cfg.top_k, cfg.top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_tokens(
    model: nn.Module,
    prompt_ids: list[int],
    cfg: SamplingConfig,
    use_cache: bool = True,
    stats: GenerationStats | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time. Stops at a stop token, max_new_tokens, or the context end.

    ``use_cache=False`` recomputes the whole sequence every step: slower, and the reference
    the cached path is tested against.
    """
    if not prompt_ids:
        raise ValueError("the prompt is empty; give at least one token (e.g. the BOS token)")
    model.eval()
    device = next(model.parameters()).device
    max_len = model.cfg.max_seq_len
    pos_learned = model.cfg.pos_embedding == "learned"
    ids = list(prompt_ids)
    if len(ids) >= max_len and pos_learned:
        ids = ids[
            -(max_len - 1) :
        ]  # learned positions end at max_len: keep the most recent context
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    stop_ids = set(cfg.stop_token_ids)
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = len(ids)
    total = len(ids) + cfg.max_new_tokens
    if pos_learned:
        total = min(total, max_len)
    cache = model.new_cache(1, total) if use_cache else None
    x = torch.tensor([ids], device=device)
    for _ in range(cfg.max_new_tokens):
        if len(ids) >= total:
            return
        logits = model(x, cache=cache)[:, -1]
        nxt = int(sample_next(logits, cfg, generator)[0])
        if nxt in stop_ids:
            stats.finish_reason = "stop"
            return
        stats.completion_tokens += 1
        yield nxt
        ids.append(nxt)
        x = (
            torch.tensor([[nxt]], device=device)
            if use_cache
            else torch.tensor([ids], device=device)
        )


def check_prompt_fits(n_tokens: int, max_seq_len: int) -> None:
    """Refuse a raw prompt longer than the model's context (as the server's /v1/completions
    does with a 400): cutting it would continue a different text than the one given. A chat
    conversation is different: its oldest turns are dropped, with a note (`stream_chat`)."""
    if n_tokens > max_seq_len:
        raise ConfigError(
            f"the prompt is {n_tokens} tokens; this model's context is {max_seq_len} "
            "(max_seq_len), and a prompt cut to fit would be continued as a different text. "
            f"Shorten the prompt to at most {max_seq_len} tokens (keep its end), or use a "
            "model with a longer context (`lmforge midtrain` extends it)"
        )


def stream_text(
    model: nn.Module,
    tokenizer,
    prompt: str,
    cfg: SamplingConfig,
    add_bos: bool = True,
    stats: GenerationStats | None = None,
) -> Iterator[str]:
    """Text pieces as they are generated, cut at the first stop string.

    Byte-level tokens can end mid-character, so text is released only once it decodes cleanly,
    and held back while it could still be the start of a stop string. A prompt longer than the
    context is refused here, when called, before any text is produced.
    """
    prompt_ids = tokenizer.encode(prompt, add_bos=add_bos and tokenizer.bos_id is not None)
    check_prompt_fits(len(prompt_ids), model.cfg.max_seq_len)
    return stream_ids(model, tokenizer, prompt_ids, cfg, stats)


class TextStream:
    """Token ids in, text pieces out, cut at the first stop string.

    Byte-level tokens can end mid-character, so text is released only once it decodes cleanly,
    and held back while it could still be the start of a stop string. `push` returns the text
    a new token releases (maybe "") and whether a stop string ended the answer; `flush` the
    rest at the end.
    """

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, stop
        self.hold = max((len(s) - 1 for s in stop), default=0)
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token: int) -> tuple[str, bool]:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return "", False  # an incomplete UTF-8 sequence: wait for its other bytes
        cut = min((i for s in self.stop if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            piece = text[self.emitted : cut] if cut > self.emitted else ""
            self.emitted = len(text)
            return piece, True
        safe = len(text) - self.hold  # keep back a tail that might grow into a stop string
        if safe <= self.emitted:
            return "", False
        piece, self.emitted = text[self.emitted : safe], safe
        return piece, False

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        piece, self.emitted = text[self.emitted :], max(self.emitted, len(text))
        return piece


def end_token_ids(tokenizer, cfg: SamplingConfig) -> SamplingConfig:
    """cfg with EOS and <|im_end|> (the end of a chat turn) among its stop tokens."""
    ends = [t for t in (tokenizer.eos_id, tokenizer.im_end_id) if t is not None]
    if all(t in cfg.stop_token_ids for t in ends):
        return cfg
    return SamplingConfig(**{**cfg.__dict__, "stop_token_ids": [*cfg.stop_token_ids, *ends]})


def stream_ids(
    model: nn.Module,
    tokenizer,
    prompt_ids: list[int],
    cfg: SamplingConfig,
    stats: GenerationStats | None = None,
) -> Iterator[str]:
    """`stream_text` from token ids; stops at EOS and at <|im_end|> (the end of a chat turn)."""
    cfg = end_token_ids(tokenizer, cfg)
    stats = stats if stats is not None else GenerationStats()
    text = TextStream(tokenizer, cfg.stop)
    for tok in generate_tokens(model, prompt_ids, cfg, stats=stats):
        piece, stopped = text.push(tok)
        if piece:
            yield piece
        if stopped:
            stats.finish_reason = "stop"
            return
    if tail := text.flush():
        yield tail


def stream_chat(
    model: nn.Module,
    tokenizer,
    messages: list[dict],
    cfg: SamplingConfig,
    stats: GenerationStats | None = None,
) -> Iterator[str]:
    """The assistant's next turn, streamed. The prompt is the training template's
    (data/chat.py), cut from the left when the conversation outgrows the context."""

    room = model.cfg.max_seq_len - min(cfg.max_new_tokens, model.cfg.max_seq_len // 2)
    ids, cut = encode_prompt(tokenizer, messages, max(1, room))
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_truncated = cut
    yield from stream_ids(model, tokenizer, ids, cfg, stats)


def generate_text(
    model: nn.Module, tokenizer, prompt: str, cfg: SamplingConfig, add_bos: bool = True
) -> str:
    return "".join(stream_text(model, tokenizer, prompt, cfg, add_bos=add_bos))


class SampleConfig(Section):
    """A recipe's `samples:` section: completions written beside a trained LM."""

    prompts: list[str] = ["The meaning of", "A dictionary is", "In the beginning"]
    max_new_tokens: int = Field(60, ge=1)
    temperature: float = Field(0.8, ge=0)  # 0: greedy
    top_k: int = Field(50, ge=0)  # 0: no top-k cut
    seed: int = 0

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            seed=self.seed,
        )


def write_samples(model, tokenizer, cfg: SampleConfig) -> list[dict]:
    """One completion per prompt of a recipe's `samples:` section."""
    return [
        {"prompt": p, "completion": generate_text(model, tokenizer, p, cfg.sampling())}
        for p in cfg.prompts
    ]
