"""Byte-level BPE tokenizers (Hugging Face `tokenizers`) with every special token reserved.

The special tokens take ids 0..7 at training time, so later stages (chat, MLM, classification)
need no new vocabulary and no resized embeddings:

    0 <|endoftext|>  end of a document (EOS)      4 <|im_end|>    end of a chat turn
    1 <|bos|>        start of a document (BOS)     5 <|mask|>      masked-LM target slot
    2 <|pad|>        padding                       6 <|sep|>       segment separator
    3 <|im_start|>   start of a chat turn (ChatML)  7 <|unk|>       reserved

Byte-level BPE round-trips any UTF-8 text exactly: no normaliser, no prefix space.

Text is text: `encode` reads a special token's string inside text ("<|im_start|>" typed by a
user, found in a dataset or a web page) as the plain characters it is, never as the control
token, so no message can forge a chat turn, a document boundary or a mask. Control tokens
enter a sequence only by id: the chat template (data/chat.py), BOS/EOS here, the
classification template. `encode(..., allow_special=True)` is for trusted text written with
the tokens on purpose (a fill-mask prompt). Decoding is unchanged.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from lmforge.errors import ConfigError, DataError
from lmforge.utils import atomic_write_text, read_json, write_json

EOS, BOS, PAD, IM_START, IM_END, MASK, SEP, UNK = (
    "<|endoftext|>",
    "<|bos|>",
    "<|pad|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|mask|>",
    "<|sep|>",
    "<|unk|>",
)
SPECIAL_TOKENS = [EOS, BOS, PAD, IM_START, IM_END, MASK, SEP, UNK]
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # every byte plus the specials

# data/chat.py's ChatML as a Jinja template, in transformers' convention (`messages`,
# `add_generation_prompt`, `bos_token`), for the runtimes that format chats themselves:
# transformers' apply_chat_template, llama.cpp and llama-cpp-python (read from the GGUF file).
# It renders exactly the text chat.py encodes, and that text tokenizes to chat.py's ids
# (tests/test_export_gguf.py). The BOS token leads only for tokenizers that have one
# (lmforge's), never for those without (Qwen's): llama.cpp then names some other token its BOS,
# and a template reading `bos_token` would print it.
#
# The one intended difference: chat.py encodes each content as plain text, so a message
# holding "<|im_start|>" stays the 12 characters it is; a runtime that renders this template
# to a string and tokenizes the string reads it back as the control token. The template cannot
# prevent that (it makes text, not ids): serve untrusted input with lmforge, or strip the
# control strings from messages before they reach another runtime.
#
# A known, unintended one (chat.py's to settle): chat.py encodes the role header ("user\n") and
# the content apart, a runtime the whole string, so content that starts with two or more
# whitespace characters (with Qwen2's pre-tokenizer: with a newline) can share a token with the
# header's newline there, e.g. "\n   " before indented code.
_CHATML_BOS = "{{- bos_token }}"
_CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def chat_template(with_bos: bool) -> str:
    """The ChatML Jinja template (see above), with the BOS token first when `with_bos`."""
    return (_CHATML_BOS if with_bos else "") + _CHATML


# Roles every stage asks for by name, and lmforge's own token for each. A tokenizer from
# elsewhere (Qwen2.5, BERT, ...) names its own in tokenizer_config.json / special_tokens_map.json.
ROLES = {
    "eos": EOS,
    "bos": BOS,
    "pad": PAD,
    "im_start": IM_START,
    "im_end": IM_END,
    "mask": MASK,
    "sep": SEP,
    "unk": UNK,
    "cls": None,
}


class Tokenizer:
    """A thin wrapper that names the special ids; the HF tokenizer does the work.

    ``specials`` maps a role ("eos", "pad", "cls", ...) to its token string; roles it leaves
    out fall back to lmforge's token of that name when the vocabulary has it. The wrapped
    HF tokenizer is set to read special-token strings in text as text (see the module note).
    """

    def __init__(self, hf: HFTokenizer, specials: dict[str, str | None] | None = None):
        self.hf = hf
        vocab = hf.get_vocab(with_added_tokens=True)
        self.specials = {r: t for r, t in ROLES.items() if t is not None and t in vocab}
        self.specials.update({r: t for r, t in (specials or {}).items() if r in ROLES})
        self._ids = {r: vocab.get(t) if t else None for r, t in self.specials.items()}
        self._truncating_cache: dict[int, HFTokenizer] = {}
        self._parsing_specials: HFTokenizer | None = None
        self._text_is_text()

    def _text_is_text(self) -> None:
        """Make `self.hf` encode every special token's string as plain text.

        `add_special_tokens=False` only stops the post-processor's template; the `tokenizers`
        library still matches added special tokens inside the text unless
        `encode_special_tokens` is set (it is a runtime setting, not saved in tokenizer.json).
        It spares only tokens flagged special, so a role token a tokenizer file added as an
        ordinary token (ChatML fine-tunes often add <|im_start|> that way) is flagged here.
        """
        added = self.hf.get_added_tokens_decoder()
        for i in set(self._ids.values()):
            t = added.get(i) if i is not None else None
            if t is not None and not t.special:
                self.hf.add_special_tokens(
                    [
                        AddedToken(
                            t.content,
                            single_word=t.single_word,
                            lstrip=t.lstrip,
                            rstrip=t.rstrip,
                            normalized=t.normalized,
                            special=True,
                        )
                    ]
                )
        self.hf.encode_special_tokens = True

    # --- ids -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.hf.id_to_token(i)

    def role_id(self, role: str) -> int | None:
        return self._ids.get(role)

    def set_role(self, role: str, token_id: int) -> None:
        """Name a special token (e.g. the pad token a model's config gives but the tokenizer's
        files do not)."""
        token = self.id_to_token(token_id)
        if role not in ROLES or token is None:
            raise ConfigError(f"cannot make id {token_id} the {role} token of this tokenizer")
        self.specials[role], self._ids[role] = token, token_id
        self._text_is_text()

    @property
    def eos_id(self) -> int | None:
        return self._ids.get("eos")

    @property
    def bos_id(self) -> int | None:
        return self._ids.get("bos")

    @property
    def pad_id(self) -> int | None:
        return self._ids.get("pad")

    @property
    def mask_id(self) -> int | None:
        return self._ids.get("mask")

    @property
    def cls_id(self) -> int | None:
        return self._ids.get("cls")

    @property
    def im_start_id(self) -> int | None:
        return self._ids.get("im_start")

    @property
    def im_end_id(self) -> int | None:
        return self._ids.get("im_end")

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template other runtimes format chats with (None without ChatML)."""
        if self.im_start_id is None or self.im_end_id is None:
            return None
        return chat_template(with_bos=self.bos_id is not None)

    @property
    def special_ids(self) -> set[int]:
        return {i for i in self._ids.values() if i is not None}

    @property
    def is_lmforge(self) -> bool:
        """Trained by lmforge (its reserved specials at ids 0..7)."""
        return [self.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))

    # --- text <-> ids --------------------------------------------------------------------
    def encode(
        self, text: str, add_bos: bool = False, add_eos: bool = False, allow_special: bool = False
    ) -> list[int]:
        """Ids of `text` as plain text: "<|im_end|>" in it is the characters, not the token.
        `allow_special=True` reads special-token strings as the tokens: only for trusted text
        written with them on purpose (a fill-mask prompt), never for a user's or a dataset's."""
        hf = self._special_parsing() if allow_special else self.hf
        ids = hf.encode(text, add_special_tokens=False).ids
        return self._wrap(ids, add_bos, add_eos)

    def encode_batch(
        self, texts: list[str], add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        """As `encode` (plain text), parallel in Rust across the machine's cores."""
        return [
            self._wrap(e.ids, add_bos, add_eos)
            for e in self.hf.encode_batch(texts, add_special_tokens=False)
        ]

    def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos:
            if self.bos_id is None:
                raise ConfigError("this tokenizer has no BOS token")
            ids = [self.bos_id, *ids]
        if add_eos:
            if self.eos_id is None:
                raise ConfigError("this tokenizer has no EOS token")
            ids = [*ids, self.eos_id]
        return ids

    def encode_for_classification(
        self, texts: list[str], max_length: int
    ) -> tuple[list[list[int]], list[bool]]:
        """Each text in the tokenizer's own single-sequence template, cut to max_length tokens.

        The template is the tokenizer's: BERT and ModernBERT add [CLS] ... [SEP], Qwen2.5 adds
        nothing (its classifier reads the last text token); lmforge's tokenizers add BOS ... EOS.
        Returns the ids and, per text, whether it was truncated (reported as a slice).
        """
        hf = self._truncating(max_length)
        encodings = hf.encode_batch(list(texts), add_special_tokens=True)
        return [e.ids for e in encodings], [bool(e.overflowing) for e in encodings]

    def _special_parsing(self) -> HFTokenizer:
        """A copy that matches special-token strings in text (made once; the setting lives on
        the tokenizer, and flipping it on the shared one would race the server's threads)."""
        if self._parsing_specials is None:
            self._parsing_specials = HFTokenizer.from_str(self.hf.to_str())
            self._parsing_specials.encode_special_tokens = False
        return self._parsing_specials

    def _truncating(self, max_length: int) -> HFTokenizer:
        """A copy with the template and truncation set (settings live on the tokenizer), made
        once per length: copying a 150k-token vocabulary costs far more than encoding."""

        cache = self._truncating_cache
        if max_length not in cache:
            hf = HFTokenizer.from_str(self.hf.to_str())
            hf.encode_special_tokens = True  # not saved by to_str: text is text here too
            if self.is_lmforge:
                hf.post_processor = processors.TemplateProcessing(
                    single=f"{BOS} $A {EOS}",
                    special_tokens=[(BOS, self.bos_id), (EOS, self.eos_id)],
                )
            added = hf.num_special_tokens_to_add(is_pair=False)
            if max_length <= added:
                raise ConfigError(
                    f"task.max_length {max_length} leaves no room for text next to the "
                    f"{added} special tokens this tokenizer adds"
                )
            hf.enable_truncation(max_length)
            hf.no_padding()
            cache[max_length] = hf
        return cache[max_length]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    # --- files ---------------------------------------------------------------------------
    def fingerprint(self) -> str:
        return hashlib.sha256(self.hf.to_str().encode()).hexdigest()[:16]

    def save(self, out_dir: str | os.PathLike) -> None:
        """tokenizer.json plus the two small files transformers' AutoTokenizer reads (with the
        ChatML chat template when the tokenizer has the ChatML tokens)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "tokenizer.json", self.hf.to_str())
        special = {
            f"{role}_token": tok
            for role, tok in self.specials.items()
            if role in ("bos", "eos", "pad", "mask", "unk", "sep", "cls") and tok
        }
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 1_000_000,
            "clean_up_tokenization_spaces": False,
            **special,
        }
        if self.is_lmforge:
            config["add_prefix_space"] = False
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        write_json(out_dir / "tokenizer_config.json", config)
        write_json(out_dir / "special_tokens_map.json", special)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """tokenizer.json (with the special-token names beside it), or a WordPiece vocab.txt."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        file = path / "tokenizer.json" if path.is_dir() else path
        specials = _special_names(folder)
        if not file.is_file() and (folder / "vocab.txt").is_file():
            bert = {
                "pad": "[PAD]",
                "unk": "[UNK]",
                "cls": "[CLS]",
                "sep": "[SEP]",
                "mask": "[MASK]",
            }
            return cls(_wordpiece_from_vocab(folder), {**bert, **specials})
        if not file.is_file():
            raise DataError(
                f"no tokenizer at {path} (expected {file}). Train one with "
                f"`lmforge tokenizer train --data DATA --out {path}`"
            )
        try:
            return cls(HFTokenizer.from_file(str(file)), specials)
        except Exception as e:  # the Rust side raises a plain Exception for a bad file
            raise DataError(f"{file} is not a valid tokenizer.json ({e})") from None


def _special_names(folder: Path) -> dict[str, str | None]:
    """Role -> token from transformers' tokenizer_config.json and special_tokens_map.json."""

    out: dict[str, str | None] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if not (folder / name).is_file():
            continue
        try:
            data = read_json(folder / name)
        except ValueError as e:
            raise DataError(f"{folder / name} is not valid JSON ({e})") from None
        for role in ROLES:
            key = f"{role}_token"
            if key in data:
                value = data[key]
                out[role] = value.get("content") if isinstance(value, dict) else value
    return out


def _wordpiece_from_vocab(folder: Path) -> HFTokenizer:
    """A BERT tokenizer.json built from vocab.txt, as transformers' BertTokenizerFast does."""

    config = (
        read_json(folder / "tokenizer_config.json")
        if (folder / "tokenizer_config.json").is_file()
        else {}
    )
    wp = BertWordPieceTokenizer(
        str(folder / "vocab.txt"), lowercase=config.get("do_lower_case", True)
    )
    return wp._tokenizer


def new_bpe() -> HFTokenizer:
    tok = HFTokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2, progress: bool = True
) -> Tokenizer:
    if vocab_size < MIN_VOCAB:
        raise ConfigError(
            f"vocab size {vocab_size} is too small: it must hold the 256 byte tokens and the "
            f"{len(SPECIAL_TOKENS)} special tokens, so at least {MIN_VOCAB}"
        )
    tok = new_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tok)


def token_byte_lengths(tokenizer: Tokenizer) -> list[int]:
    """UTF-8 bytes each token id stands for (0 for special tokens), for bits per byte.

    In byte-level BPE every character of a vocabulary entry stands for exactly one byte.
    """
    special = tokenizer.special_ids
    out = []
    for i in range(tokenizer.vocab_size):
        token = tokenizer.id_to_token(i)
        out.append(0 if token is None or i in special else len(token))
    return out


def bytes_per_token(tokenizer: Tokenizer, texts: Iterable[str]) -> float:
    texts = list(texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
    return n_bytes / max(1, n_tokens)


def is_heldout(index: int, fraction: float, seed: int) -> bool:
    """A stable pseudo-random choice of documents, independent of the corpus size."""
    h = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < fraction
