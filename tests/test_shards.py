import numpy as np
import pytest
import torch

from lmforge.data.shards import (
    PackedLoader,
    ShardDataset,
    build_shards,
    iter_eval_batches,
    shards_match,
    token_dtype,
)
from lmforge.errors import DataError
from lmforge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_corpus, tiny_tokenizer_dir):
    tok = Tokenizer.load(tiny_tokenizer_dir)
    out = tmp_path_factory.mktemp("shards") / "s"
    build_shards(tiny_corpus, tok, out, val_fraction=0.1, progress=False, shard_tokens=3000)
    return out, tok


def test_documents_round_trip_through_the_shards(shards, tiny_corpus):
    import json

    out, tok = shards
    texts = [json.loads(line)["text"] for line in open(tiny_corpus)]
    train, val = ShardDataset(out, "train"), ShardDataset(out, "val")
    assert train.num_docs + val.num_docs == len(texts) and val.num_docs > 10
    assert (
        len(train.meta["splits"]["train"]["shards"]) > 1
    )  # several shard files, one logical split
    decoded = {
        tok.decode(ds.tokens(i)[1:-1].tolist()) for ds in (train, val) for i in range(ds.num_docs)
    }
    assert decoded == set(texts)
    doc = train.tokens(0)
    assert doc[0] == tok.bos_id and doc[-1] == tok.eos_id and doc.dtype == np.uint16


def test_split_is_by_document_and_stable(shards, tiny_corpus, tmp_path):
    out, tok = shards
    again = tmp_path / "again"
    build_shards(tiny_corpus, tok, again, val_fraction=0.1, progress=False)
    a, b = ShardDataset(out, "val"), ShardDataset(again, "val")
    assert [a.tokens(i).tolist() for i in range(a.num_docs)] == [
        b.tokens(i).tolist() for i in range(b.num_docs)
    ]
    assert shards_match(out, tok)


def test_dtype_follows_vocab_size():
    assert (
        token_dtype(8192) == np.uint16
        and token_dtype(65536) == np.uint16
        and token_dtype(151936) == np.uint32
    )


def test_rows_start_with_bos_and_targets_are_shifted(shards):
    out, tok = shards
    ds = ShardDataset(out, "train")
    assert ds.doc_len.max() < 256  # every document fits a row: every row opens with a document
    loader = PackedLoader(ds, batch_size=4, seq_len=256, seed=0)
    for _ in range(5):
        b = loader.next_batch()
        assert b["input_ids"].shape == (4, 256) and b["input_ids"].dtype == torch.long
        assert (b["input_ids"][:, 0] == tok.bos_id).all()
        assert torch.equal(b["input_ids"][:, 1:], b["targets"][:, :-1])


def test_long_documents_are_split_not_thrown_away(shards):
    out, tok = shards
    ds = ShardDataset(out, "train")
    loader = PackedLoader(ds, batch_size=8, seq_len=16, seed=0)
    rows = torch.cat([loader.next_batch()["input_ids"] for _ in range(ds.num_tokens // (8 * 17))])
    # with rows shorter than documents, rows open at a document or at a row-sized piece of one,
    # and every token of the split is used about once per epoch
    assert (rows[:, 0] == tok.bos_id).float().mean() > 0.2
    assert rows.numel() > 0.8 * ds.num_tokens * 16 / 17


def test_loader_is_deterministic_and_resumes_exactly(shards):
    out, _ = shards
    ds = ShardDataset(out, "train")
    a = PackedLoader(ds, 3, 32, seed=7)
    first = [a.next_batch()["input_ids"] for _ in range(5)]
    state = a.state_dict()
    rest = [a.next_batch()["input_ids"] for _ in range(40)]  # crosses an epoch boundary
    b = PackedLoader(ds, 3, 32, seed=7)
    assert all(torch.equal(x, b.next_batch()["input_ids"]) for x in first)
    c = PackedLoader(ds, 3, 32, seed=7)
    c.load_state_dict(state)
    assert all(torch.equal(x, c.next_batch()["input_ids"]) for x in rest)
    other = PackedLoader(ds, 3, 32, seed=8)
    assert not torch.equal(first[0], other.next_batch()["input_ids"])


def test_ranks_take_disjoint_rows(shards):
    out, _ = shards
    ds = ShardDataset(out, "train")
    one = PackedLoader(ds, 4, 32, seed=1)
    single = torch.cat([one.next_batch()["input_ids"] for _ in range(2)])
    r0 = PackedLoader(ds, 4, 32, seed=1, rank=0, world_size=2).next_batch()["input_ids"]
    r1 = PackedLoader(ds, 4, 32, seed=1, rank=1, world_size=2).next_batch()["input_ids"]
    assert torch.equal(torch.stack([r0, r1], 1).flatten(0, 1), single)


def test_tiny_corpus_cycles_epochs_and_eval_is_repeatable(shards):
    out, _ = shards
    val = ShardDataset(out, "val")
    loader = PackedLoader(val, 8, 256, seed=0)
    for _ in range(20):  # far more rows than the split holds
        loader.next_batch()
    assert loader.epoch > 0
    a = [b["input_ids"] for b in iter_eval_batches(val, 2, 32, 5)]
    b = [b["input_ids"] for b in iter_eval_batches(val, 2, 32, 5)]
    assert len(a) == 5 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_empty_corpus_and_truncated_shard(tmp_path, shards):
    _, tok = shards
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n{"text": "   "}\n')
    with pytest.raises(DataError, match="no text"):
        build_shards(tmp_path / "empty.jsonl", tok, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    out, _ = shards
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    f = broken / "train" / "tokens-00000.bin"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(DataError, match="truncated"):
        ShardDataset(broken, "train")
