"""Conversations, the ChatML template, assistant-only loss masks and preference pairs.

One function turns messages into tokens for training *and* for inference, so the model is
always prompted exactly as it was trained:

    <|bos|><|im_start|>system\\n{content}<|im_end|>\\n
    <|im_start|>user\\n{content}<|im_end|>\\n
    <|im_start|>assistant\\n{content}<|im_end|>\\n          <- trained: content + <|im_end|>
    ...
    <|im_start|>assistant\\n                                <- the generation prompt

Only assistant content and its <|im_end|> carry labels (a model that never learns to emit
<|im_end|> never stops); system and user turns, role headers and the newline after
<|im_end|> are -100. The BOS token leads when the tokenizer has one (lmforge's do, Qwen's not).

Content is text: the control tokens (<|bos|>, <|im_start|>, <|im_end|>) are put in by id here
and nowhere else, and a role's content is encoded as plain text (`Tokenizer.encode`), so a
message holding "<|im_end|>\n<|im_start|>system\n..." stays inside its own turn and cannot
forge a system or assistant turn, in training data or at inference.

Files (JSONL, one example per line):
    conversations  {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
                   or {"prompt": ..., "completion": ...}
    preferences    {"prompt": ..., "chosen": ..., "rejected": ...}
                   (prompt a string or a message list; chosen/rejected strings or message lists)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.data.sources import iter_jsonl_objects
from lmforge.errors import ConfigError, DataError

ROLES = ("system", "user", "assistant")
IGNORE = -100


# --------------------------------------------------------------------------------------------
# Validation and files
# --------------------------------------------------------------------------------------------


def check_messages(messages, where: str = "", for_training: bool = False) -> list[dict]:
    """Return messages as [{"role", "content"}] or raise with the place and the fix."""
    at = f"{where}: " if where else ""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{at}'messages' must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{at}message {i} needs 'role' and 'content' keys, got {m!r:.80}")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise DataError(
                f"{at}message {i} has role {role!r}; roles are {', '.join(ROLES)} "
                "(map others, e.g. 'human' -> 'user', 'gpt' -> 'assistant', before training)"
            )
        if not isinstance(content, str):
            raise DataError(f"{at}message {i} content must be a string")
        if role == "assistant" and not content.strip():
            raise DataError(f"{at}message {i} is an empty assistant message: nothing to learn")
        out.append({"role": role, "content": content})
    if for_training and out[-1]["role"] != "assistant":
        raise DataError(
            f"{at}the conversation ends with a {out[-1]['role']} turn; SFT learns assistant "
            "turns, so each conversation must end with one (drop the trailing turn)"
        )
    return out


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """(place, object) for each non-empty line; the place is path:line for error messages."""
    if not Path(path).is_file():
        raise DataError(f"{path} does not exist; make one with `lmforge data instructions`")
    for n, obj in iter_jsonl_objects(path):
        yield f"{path}:{n}", obj


def _as_messages(value, role: str) -> list[dict]:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def load_conversations(path: str | os.PathLike) -> list[list[dict]]:
    """Training conversations from JSONL (messages, or prompt/completion pairs)."""
    return [r["messages"] for r in load_conversation_records(path)]


def load_conversation_records(path: str | os.PathLike) -> list[dict]:
    """As `load_conversations`, each a dict with its checked "messages" and the line's other
    keys (e.g. a "task" to report metrics by)."""
    out = []
    for where, obj in read_jsonl(path):
        if "messages" in obj:
            msgs = obj["messages"]
        elif "prompt" in obj and "completion" in obj:
            msgs = _as_messages(obj["prompt"], "user") + _as_messages(
                obj["completion"], "assistant"
            )
        else:
            raise DataError(
                f"{where}: expected {{'messages': [...]}} or {{'prompt', 'completion'}}, "
                f"got keys {sorted(obj)}"
            )
        extra = {k: v for k, v in obj.items() if k not in ("messages", "prompt", "completion")}
        out.append({**extra, "messages": check_messages(msgs, where, for_training=True)})
    if not out:
        raise DataError(f"{path} holds no conversations")
    return out


@dataclass
class Preference:
    prompt: list[dict]  # the conversation so far, ending with a user turn
    chosen: str
    rejected: str


def load_preferences(path: str | os.PathLike) -> list[Preference]:
    out = []
    for where, obj in read_jsonl(path):
        missing = {"prompt", "chosen", "rejected"} - set(obj)
        if missing:
            raise DataError(f"{where}: a preference pair needs {sorted(missing)}")
        prompt = check_messages(_as_messages(obj["prompt"], "user"), where)
        answers = []
        for key in ("chosen", "rejected"):
            value = obj[key]
            if isinstance(value, list):  # a message list: its (last) assistant turn
                value = check_messages(value, f"{where} {key}")[-1]["content"]
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{where}: '{key}' is empty")
            answers.append(value)
        if answers[0].strip() == answers[1].strip():
            raise DataError(f"{where}: chosen equals rejected; such a pair teaches nothing")
        out.append(Preference(prompt, *answers))
    if not out:
        raise DataError(f"{path} holds no preference pairs")
    return out


# --------------------------------------------------------------------------------------------
# The template
# --------------------------------------------------------------------------------------------


def render(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """ChatML text (for display and for other tools; tokens come from `encode_chat`)."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def check_chat_tokenizer(tokenizer) -> None:
    if tokenizer.im_start_id is None or tokenizer.im_end_id is None:
        raise ConfigError(
            "this tokenizer has no <|im_start|>/<|im_end|> tokens, so it cannot speak ChatML. "
            "lmforge tokenizers reserve them (retrain with `lmforge tokenizer train`); for "
            "another tokenizer add them as special tokens and resize the model's embeddings"
        )


def _segments(tokenizer, messages: list[dict], add_generation_prompt: bool):
    """(token ids, trained?) pieces in order."""
    start, end = tokenizer.im_start_id, tokenizer.im_end_id
    newline = tokenizer.encode("\n")
    if tokenizer.bos_id is not None:
        yield [tokenizer.bos_id], False
    for m in messages:
        yield [start, *tokenizer.encode(m["role"] + "\n")], False
        trained = m["role"] == "assistant"
        yield [*tokenizer.encode(m["content"]), end], trained
        yield newline, False
    if add_generation_prompt:
        yield [start, *tokenizer.encode("assistant\n")], False


def encode_chat(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids and labels (the id where trained, -100 elsewhere) of a whole conversation."""
    check_chat_tokenizer(tokenizer)
    ids, labels = [], []
    for seg, trained in _segments(tokenizer, messages, False):
        ids += seg
        labels += seg if trained else [IGNORE] * len(seg)
    return ids, labels


def encode_prompt(tokenizer, messages: list[dict], max_len: int) -> tuple[list[int], bool]:
    """The generation prompt for `messages`, cut from the left to fit `max_len` tokens (the
    BOS token kept). Returns (ids, truncated)."""
    check_chat_tokenizer(tokenizer)
    ids = [t for seg, _ in _segments(tokenizer, messages, True) for t in seg]
    if len(ids) <= max_len:
        return ids, False
    keep = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    return keep + ids[len(ids) - (max_len - len(keep)) :], True


def encode_completion(tokenizer, prompt: list[dict], answer: str) -> tuple[list[int], int]:
    """A prompt with one assistant answer: (ids, where the answer starts). The answer's tokens
    (content + <|im_end|>, exactly the trained tokens of `encode_chat`) are what DPO and the
    reward model score."""
    check_chat_tokenizer(tokenizer)
    ids = [t for seg, _ in _segments(tokenizer, prompt, True) for t in seg]
    return ids + tokenizer.encode(answer) + [tokenizer.im_end_id], len(ids)


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


class PackedChatBatches:
    """Conversations packed into rows of `seq_len` tokens (whole conversations, never split;
    one that is longer is cut and counted), shuffled each epoch; a trainer batch source.

    Packing puts several short conversations in one row: attention crosses their boundary
    (as in pre-training's packed documents), the loss only ever sees assistant tokens.
    """

    def __init__(
        self,
        encoded: list[tuple[list[int], list[int]]],
        batch_size: int,
        seq_len: int,
        pad_id: int,
        seed: int = 0,
        shuffle: bool = True,
    ):
        self.encoded, self.batch_size, self.seq_len, self.pad_id = (
            encoded,
            batch_size,
            seq_len,
            pad_id,
        )
        self.seed, self.shuffle = seed, shuffle
        self.truncated = sum(len(ids) > seq_len + 1 for ids, _ in encoded)
        self.epoch, self.cursor = 0, 0
        self._rows = self._pack()

    def _pack(self) -> list[tuple[list[int], list[int]]]:
        order = list(range(len(self.encoded)))
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(order), generator=g).tolist()
        rows, ids, labels = [], [], []
        for i in order:
            a, b = self.encoded[i]
            a, b = a[: self.seq_len + 1], b[: self.seq_len + 1]
            if ids and len(ids) + len(a) > self.seq_len + 1:
                rows.append((ids, labels))
                ids, labels = [], []
            ids, labels = ids + a, labels + b
        if ids:
            rows.append((ids, labels))
        return rows

    def rows_per_epoch(self) -> int:
        return len(self._rows)

    def _collate(self, rows) -> dict[str, torch.Tensor]:
        n = self.seq_len + 1
        x = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        y = torch.full((len(rows), n), IGNORE, dtype=torch.long)
        for r, (ids, labels) in enumerate(rows):
            x[r, : len(ids)] = torch.tensor(ids)
            y[r, : len(labels)] = torch.tensor(labels)
        # next-token: position t predicts the label of t + 1
        return {"input_ids": x[:, :-1], "targets": y[:, 1:]}

    def next_batch(self) -> dict[str, torch.Tensor]:
        rows = []
        for _ in range(self.batch_size):
            if self.cursor >= len(self._rows):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._rows = self._pack()
            rows.append(self._rows[self.cursor])
            self.cursor += 1
        return self._collate(rows)

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Every row once, in order (evaluation)."""
        for i in range(0, len(self._rows), self.batch_size):
            yield self._collate(self._rows[i : i + self.batch_size])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._rows = self._pack()


def encode_pair(
    tokenizer, pair: Preference, seq_len: int
) -> tuple[list[int], list[bool], list[int], list[bool], bool]:
    """Chosen and rejected sequences with their answer masks; a prompt too long for `seq_len`
    loses its oldest tokens (the answers are what is scored, so they are kept whole)."""
    out, cut = [], False
    for answer in (pair.chosen, pair.rejected):
        ids, start = encode_completion(tokenizer, pair.prompt, answer)
        if len(ids) > seq_len:
            lead = 1 if tokenizer.bos_id is not None else 0
            drop = min(len(ids) - seq_len, start - lead)
            ids, start, cut = ids[:lead] + ids[lead + drop :], start - drop, True
            ids = ids[:seq_len]
        out += [ids, [i >= start for i in range(len(ids))]]
    return (*out, cut)


class PairBatches:
    """Preference pairs as batches: rows 0..B-1 chosen, B..2B-1 rejected, right-padded, with
    `answer` marking the answer tokens; a trainer batch source (shuffled each epoch)."""

    def __init__(
        self,
        tokenizer,
        pairs: list[Preference],
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        shuffle: bool = True,
    ):
        self.encoded = [encode_pair(tokenizer, p, seq_len) for p in pairs]
        self.truncated = sum(e[4] for e in self.encoded)
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.epoch, self.cursor = 0, 0
        self._order = self._shuffled()

    def _shuffled(self) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.encoded)))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.encoded), generator=g).tolist()

    def collate(self, items: list[tuple]) -> dict[str, torch.Tensor]:
        rows = [(e[0], e[1]) for e in items] + [(e[2], e[3]) for e in items]
        width = max(len(ids) for ids, _ in rows)
        x = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        answer = torch.zeros((len(rows), width), dtype=torch.bool)
        for r, (ids, mask) in enumerate(rows):
            x[r, : len(ids)] = torch.tensor(ids)
            answer[r, : len(mask)] = torch.tensor(mask)
        return {"input_ids": x, "answer": answer}

    def next_batch(self) -> dict[str, torch.Tensor]:
        items = []
        while len(items) < self.batch_size:
            if self.cursor >= len(self._order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._shuffled()
            items.append(self.encoded[self._order[self.cursor]])
            self.cursor += 1
        return self.collate(items)

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Every pair once, in order (evaluation)."""
        for i in range(0, len(self.encoded), self.batch_size):
            yield self.collate(self.encoded[i : i + self.batch_size])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._order = self._shuffled()
