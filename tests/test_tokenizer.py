import json
import random

import pytest

from lmforge.data.vocab import train_tokenizer_from_path
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import (
    MIN_VOCAB,
    SPECIAL_TOKENS,
    Tokenizer,
    token_byte_lengths,
    train_tokenizer,
)


def random_text(rng: random.Random, n: int) -> str:
    pools = [
        "abcdefghijklmnopqrstuvwxyz ",
        "ÀÉÎõüßçñ",
        "日本語中文한국어",
        "😀🚀👍🏽",
        " \t\n\r",
        "{}()[];:=+-*/\\\"'",
        "\u200b\u0301\ufeff",
    ]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(n))


def test_any_utf8_text_round_trips_exactly(tiny_tokenizer_dir):
    tok = Tokenizer.load(tiny_tokenizer_dir)
    rng = random.Random(0)
    for _ in range(300):
        s = random_text(rng, rng.randint(0, 80))
        assert tok.decode(tok.encode(s)) == s
    code = "def f(x):\n\treturn  x ** 2  # comment\n\n\n"
    assert tok.decode(tok.encode(code)) == code


def test_special_tokens_have_fixed_ids_and_are_atomic(tiny_tokenizer_dir):
    tok = Tokenizer.load(tiny_tokenizer_dir)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert (tok.eos_id, tok.bos_id, tok.pad_id, tok.im_start_id, tok.im_end_id, tok.mask_id) == (
        0,
        1,
        2,
        3,
        4,
        5,
    )
    # atomic when asked for on purpose; in ordinary text the string is text (test_injection.py)
    assert tok.encode("<|im_start|>user", allow_special=True)[0] == tok.im_start_id
    assert tok.im_start_id not in tok.encode("<|im_start|>user")
    assert tok.encode("hi", add_bos=True, add_eos=True)[0] == tok.bos_id
    assert token_byte_lengths(tok)[: len(SPECIAL_TOKENS)] == [0] * len(SPECIAL_TOKENS)


def test_transformers_loads_the_saved_tokenizer_identically(tiny_tokenizer_dir):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer.load(tiny_tokenizer_dir)
    text = "The meaning of a word, in a dictionary. Café 😀"
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tiny_tokenizer_dir / "tokenizer.json"))
    assert fast(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    auto = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    assert (
        auto.pad_token == "<|pad|>"
        and auto.eos_token == "<|endoftext|>"
        and auto.mask_token == "<|mask|>"
    )
    assert auto.decode(tok.encode(text)) == text


def test_summary_reports_compression(tiny_tokenizer_dir):
    summary = json.loads((tiny_tokenizer_dir / "summary.json").read_text())
    assert summary["vocab_size"] == 400
    assert 1.5 < summary["bytes_per_token_train"] < 8 and summary["bytes_per_token_heldout"] > 1


def test_vocab_smaller_than_the_specials_is_refused(tiny_corpus, tmp_path):
    with pytest.raises(ConfigError, match=f"at least {MIN_VOCAB}"):
        train_tokenizer(["some text"], 100)
    with pytest.raises(ConfigError, match=str(MIN_VOCAB)):
        train_tokenizer_from_path(tiny_corpus, 200, tmp_path / "tok", progress=False)
    assert not (tmp_path / "tok").exists()


def test_undecodable_input_is_an_error_and_writes_nothing(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ok.txt").write_text("fine text " * 50)
    (data / "bad.txt").write_bytes("na\xefve caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"bad.txt is not valid UTF-8"):
        train_tokenizer_from_path(data, 300, tmp_path / "tok", progress=False)
    assert not (tmp_path / "tok").exists()


def test_missing_or_corrupt_tokenizer_file(tmp_path):
    with pytest.raises(DataError, match="lmforge tokenizer train"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid tokenizer.json"):
        Tokenizer.load(tmp_path)
