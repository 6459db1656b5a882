import json
import random
from pathlib import Path

import pytest
import torch

from lmforge.config import load_config, validate
from lmforge.data.mixture import MixtureConfig, MixtureLoader, build_mixture, read_mixture
from lmforge.data.shards import ShardDataset, build_shards
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import Tokenizer

# Three sources told apart by their characters: a row decodes to letters a-m, n-z or digits.
ALPHA = "bag cab dead egg face head jam kid lab mad camel blade".split()
BETA = "no onus put rust sour trust your snow worn sport stop runs".split()
GAMMA = "12 345 6789 10 2024 77 808 31415 9 65536".split()
CHARS = {"alpha": set("abcdefghijklm"), "beta": set("nopqrstuvwxyz"), "gamma": set("0123456789")}


def source_of(text: str) -> str:
    used = set(text) - set(" .")
    matches = [name for name, chars in CHARS.items() if used <= chars]
    assert len(matches) == 1, f"row {text!r} matches {matches}"
    return matches[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """mixed.parquet: alpha and beta documents (columns text, source, domain); digits.jsonl."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    root = tmp_path_factory.mktemp("sources")

    def doc(words):
        return " ".join(rng.choice(words) for _ in range(rng.randint(4, 24))) + "."

    rows = [{"text": doc(ALPHA), "source": "a", "domain": "first"} for _ in range(150)]
    rows += [{"text": doc(BETA), "source": "b", "domain": "second"} for _ in range(150)]
    rng.shuffle(rows)
    pq.write_table(pa.Table.from_pylist(rows), root / "mixed.parquet")
    with open(root / "digits.jsonl", "w") as f:
        for _ in range(150):
            f.write(json.dumps({"body": doc(GAMMA)}) + "\n")
    return root


def make_config(tok_dir, data_dir, weights=(0.2, 0.3, 0.5), **extra) -> MixtureConfig:
    sources = [
        {"name": "alpha", "path": str(data_dir / "mixed.parquet"), "filter": {"domain": "first"}},
        {"name": "beta", "path": str(data_dir / "mixed.parquet"), "filter": {"source": ["b"]}},
        {"name": "gamma", "path": str(data_dir / "digits.jsonl"), "text_column": "body"},
    ]
    for s, w in zip(sources, weights):
        s.update(w if isinstance(w, dict) else {"weight": w})
    data = {"tokenizer": str(tok_dir), "val_fraction": 0.1, "sources": sources, **extra}
    return validate(MixtureConfig, data, "mixture.yaml")


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return Tokenizer.load(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_tokenizer_dir, data_dir):
    out = tmp_path_factory.mktemp("mix") / "mix"
    build_mixture(make_config(tiny_tokenizer_dir, data_dir), out, progress=False)
    return out


def row_sources(batch, tok) -> list[str]:
    return [source_of(tok.decode(row.tolist(), skip_special=True)) for row in batch["input_ids"]]


def test_row_shares_follow_the_weights(built, tok):
    loader = MixtureLoader(built, batch_size=8, seq_len=16, total_batches=250)
    counts = dict.fromkeys(CHARS, 0)
    for _ in range(250):
        batch = loader.next_batch()
        assert batch["input_ids"].shape == (8, 16) and batch["input_ids"].dtype == torch.long
        assert torch.equal(batch["input_ids"][:, 1:], batch["targets"][:, :-1])
        for name in row_sources(batch, tok):
            counts[name] += 1
    realised = loader.realised()
    # the loader's own count agrees with what the rows hold
    assert counts == loader.rows_drawn
    assert sum(r["tokens"] for r in realised.values()) == 250 * 8 * 16
    for name, weight in zip(CHARS, (0.2, 0.3, 0.5)):
        assert abs(realised[name]["share"] - weight) < 0.035, realised
    assert loader.realised_flat()["mix_share/beta"] == realised["beta"]["share"]


def test_schedule_switches_the_mix_at_its_fraction(tiny_tokenizer_dir, data_dir, tmp_path, tok):
    schedule = [{"from_fraction": 0.5, "weights": {"beta": 1.0}}]
    cfg = make_config(tiny_tokenizer_dir, data_dir, (1.0, 0.0, 0.0), schedule=schedule)
    build_mixture(cfg, tmp_path / "mix", progress=False)
    loader = MixtureLoader(tmp_path / "mix", batch_size=4, seq_len=16, total_batches=10)
    assert loader.weights_at(0.49) == {"alpha": 1.0, "beta": 0.0, "gamma": 0.0}
    assert loader.weights_at(0.5) == {"alpha": 0.0, "beta": 1.0, "gamma": 0.0}
    drawn = [set(row_sources(loader.next_batch(), tok)) for _ in range(12)]
    assert drawn[:5] == [{"alpha"}] * 5
    assert drawn[5:] == [{"beta"}] * 7  # from batch 5 of 10 on, and past the end


def test_filter_selects_documents_by_any_column(built, tok, data_dir):
    manifest = read_mixture(built)
    for name in ("alpha", "beta"):
        assert ShardDataset(built / name, "train").meta["source"] == str(data_dir / "mixed.parquet")
        assert manifest["sources"][name]["filter"] == {
            "documents_scanned": 300,
            "documents_kept": 150,
        }
        docs = 0
        for split in ("train", "val"):
            ds = ShardDataset(built / name, split)
            for i in range(ds.num_docs):
                assert source_of(tok.decode(ds.tokens(i).tolist(), skip_special=True)) == name
            docs += ds.num_docs
        assert docs == 150


def test_a_filtered_source_keeps_the_whole_corpus_split(built, tok, data_dir, tmp_path):
    """A source cut out of a corpus holds out exactly the documents a model trained on the
    whole corpus (same seed and fraction) never saw: its val loss is honest."""
    whole = tmp_path / "whole"
    build_shards(data_dir / "mixed.parquet", tok, whole, val_fraction=0.1, seed=0, progress=False)

    def texts(path, split):
        ds = ShardDataset(path, split)
        return {tok.decode(ds.tokens(i).tolist(), skip_special=True) for i in range(ds.num_docs)}

    for name in ("alpha", "beta"):
        mine = texts(built / name, "val")
        assert mine and mine == {t for t in texts(whole, "val") if source_of(t) == name}


def test_filter_that_keeps_nothing_names_the_values_present(tiny_tokenizer_dir, data_dir, tmp_path):
    cfg = make_config(tiny_tokenizer_dir, data_dir)
    cfg.sources[1].filter = {"source": "kjv"}
    with pytest.raises(DataError, match=r"kept none of the 300 .* source: a, b"):
        build_mixture(cfg, tmp_path / "mix", progress=False)


def test_resume_reads_the_same_batches(tiny_tokenizer_dir, data_dir, tmp_path):
    schedule = [{"from_fraction": 0.5, "weights": {"alpha": 1, "gamma": 1}}]
    build_mixture(
        make_config(tiny_tokenizer_dir, data_dir, schedule=schedule), tmp_path / "m", progress=False
    )

    def loader():
        return MixtureLoader(tmp_path / "m", batch_size=4, seq_len=16, total_batches=40, seed=3)

    first = loader()
    for _ in range(17):  # long enough for the small sources to start a second epoch
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints hold it as JSON
    expected = [first.next_batch() for _ in range(9)]  # crosses the phase at batch 20

    resumed = loader()
    resumed.load_state_dict(state)
    for want in expected:
        got = resumed.next_batch()
        assert all(torch.equal(got[k], want[k]) for k in ("input_ids", "targets"))
    assert resumed.realised() == first.realised()

    other = MixtureLoader(tmp_path / "m", batch_size=4, seq_len=16, total_batches=41, seed=3)
    with pytest.raises(DataError, match="total_batches"):
        other.load_state_dict(state)


def test_builds_and_draws_are_deterministic(tiny_tokenizer_dir, data_dir, tmp_path):
    cfg = make_config(tiny_tokenizer_dir, data_dir)
    a = build_mixture(cfg, tmp_path / "a", progress=False)
    b = build_mixture(cfg, tmp_path / "b", progress=False)
    assert {**a, "build_seconds": 0} == {**b, "build_seconds": 0}
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.bin"))
    assert len(files) == 6
    assert all(
        (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files
    )

    la, lb = (MixtureLoader(tmp_path / d, 4, 16, total_batches=10) for d in "ab")
    lc = MixtureLoader(tmp_path / "a", 4, 16, total_batches=10, seed=1)
    batches = [(la.next_batch(), lb.next_batch(), lc.next_batch()) for _ in range(5)]
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y, _ in batches)
    assert not all(torch.equal(x["input_ids"], z["input_ids"]) for x, _, z in batches)


def test_epochs_become_token_shares_of_the_run(tiny_tokenizer_dir, data_dir, tmp_path):
    cfg = make_config(tiny_tokenizer_dir, data_dir, ({"epochs": 1.0}, 1.0, 3.0))
    manifest = build_mixture(cfg, tmp_path / "mix", progress=False)
    alpha_tokens = manifest["sources"]["alpha"]["splits"]["train"]["tokens"]
    total_batches = 4 * alpha_tokens // (4 * 17)  # a run about 4x alpha's tokens
    loader = MixtureLoader(tmp_path / "mix", 4, 16, total_batches=total_batches)
    alpha = alpha_tokens / (total_batches * 4 * 17)
    assert alpha == pytest.approx(0.25, abs=0.01)
    assert loader.weights_at(0) == pytest.approx(
        {"alpha": alpha, "beta": (1 - alpha) / 4, "gamma": 3 * (1 - alpha) / 4}
    )
    for _ in range(total_batches):
        loader.next_batch()
    assert loader.realised()["alpha"]["epochs"] == pytest.approx(1.0, abs=0.15)

    # every source in epochs: the shares fill the run in proportion to epochs x tokens
    cfg = make_config(tiny_tokenizer_dir, data_dir, ({"epochs": 1}, {"epochs": 2}, 0.0))
    manifest = build_mixture(cfg, tmp_path / "all", progress=False)
    beta_tokens = manifest["sources"]["beta"]["splits"]["train"]["tokens"]
    shares = MixtureLoader(tmp_path / "all", 4, 16, total_batches=1000).weights_at(0)
    assert shares["alpha"] / shares["beta"] == pytest.approx(alpha_tokens / (2 * beta_tokens))

    with pytest.raises(ConfigError, match="lower their epochs or lengthen the run"):
        MixtureLoader(tmp_path / "all", 4, 16, total_batches=3)


def test_val_datasets_are_each_sources_val_split(built, tok):
    loader = MixtureLoader(built, 4, 16, total_batches=10)
    val = loader.val_datasets()
    assert list(val) == ["alpha", "beta", "gamma"]
    for name, ds in val.items():
        train = ShardDataset(built / name, "train")
        assert 0 < ds.num_docs < train.num_docs
        texts = {tok.decode(ds.tokens(i).tolist(), skip_special=True) for i in range(ds.num_docs)}
        assert {source_of(t) for t in texts} == {name}
        assert ds.num_tokens == read_mixture(built)["sources"][name]["splits"]["val"]["tokens"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"weights": (0.0, 0.0, {"epochs": 0})}, "every source has weight"),
        ({"weights": (-1.0, 1.0, 1.0)}, "greater than or equal to 0"),
        ({"weights": ({"weight": 1, "epochs": 1}, 1.0, 1.0)}, "exactly one of `weight`"),
        ({"weights": ({}, 1.0, 1.0)}, "exactly one of `weight`"),
        (
            {"schedule": [{"from_fraction": 0.8, "weights": {"alpah": 1}}]},
            "names 'alpah', which is not a source; did you mean 'alpha'",
        ),
        ({"schedule": [{"from_fraction": 0.8, "weights": {"alpha": 0}}]}, "all weights are zero"),
        ({"schedule": [{"from_fraction": 1.0, "weights": {"alpha": 1}}]}, "less than 1"),
        (
            {
                "schedule": [
                    {"from_fraction": 0.8, "weights": {"alpha": 1}},
                    {"from_fraction": 0.5, "weights": {"beta": 1}},
                ]
            },
            "must be above the previous",
        ),
        ({"source": {"name": "beta"}}, "unique; repeated: beta"),
        ({"source": {"name": "../up"}}, "plain directory name"),
        ({"source": {"shards": "x"}}, "exactly one of `path`"),
    ],
)
def test_bad_config_is_a_clear_error(tiny_tokenizer_dir, data_dir, change, message):
    cfg = make_config(tiny_tokenizer_dir, data_dir).model_dump()
    for s, w in zip(cfg["sources"], change.get("weights", ())):
        s["weight"] = s["epochs"] = None
        s.update(w if isinstance(w, dict) else {"weight": w})
    cfg["sources"][0].update(change.get("source", {}))
    cfg["schedule"] = change.get("schedule", [])
    with pytest.raises(ConfigError, match=message):
        validate(MixtureConfig, cfg, "mixture.yaml")


def test_missing_source_path_is_an_error_before_anything_is_written(
    tiny_tokenizer_dir, data_dir, tmp_path
):
    cfg = make_config(tiny_tokenizer_dir, data_dir)
    cfg.sources[2].path = str(data_dir / "nope.jsonl")
    with pytest.raises(ConfigError, match="source 'gamma': path .*nope.jsonl does not exist"):
        build_mixture(cfg, tmp_path / "mix", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_failed_build_keeps_the_previous_mixture(tiny_tokenizer_dir, data_dir, tmp_path):
    good = make_config(tiny_tokenizer_dir, data_dir)
    build_mixture(good, tmp_path / "mix", progress=False)
    before = (tmp_path / "mix" / "mixture.json").read_text()
    bad = make_config(tiny_tokenizer_dir, data_dir)
    bad.sources[2].filter = {"body": "no such document"}
    with pytest.raises(DataError):
        build_mixture(bad, tmp_path / "mix", progress=False)
    assert (tmp_path / "mix" / "mixture.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["mix"]


def test_prebuilt_shards_are_used_in_place_and_must_match_the_tokenizer(
    tiny_tokenizer_dir, tiny_corpus, data_dir, tmp_path, tok
):
    from lmforge.data.vocab import train_tokenizer_from_path

    prebuilt = tmp_path / "digits-shards"
    build_shards(data_dir / "digits.jsonl", tok, prebuilt, "body", 0.1, progress=False)
    gamma = {"weight": 1.0, "path": None, "shards": str(prebuilt)}
    cfg = make_config(tiny_tokenizer_dir, data_dir, (1.0, 1.0, gamma))
    manifest = build_mixture(cfg, tmp_path / "mix", progress=False)
    assert manifest["sources"]["gamma"]["shards"] == str(prebuilt.resolve())
    assert not (tmp_path / "mix" / "gamma").exists()
    loader = MixtureLoader(tmp_path / "mix", 4, 16, total_batches=10)
    assert loader.val_datasets()["gamma"].num_docs == ShardDataset(prebuilt, "val").num_docs

    other = tmp_path / "other-tok"
    train_tokenizer_from_path(tiny_corpus, 300, other, progress=False)
    loader.check_tokenizer(tok)
    with pytest.raises(ConfigError, match="not the model's tokenizer"):
        loader.check_tokenizer(Tokenizer.load(other))
    cfg.tokenizer = str(other)
    with pytest.raises(ConfigError, match="built with another tokenizer"):
        build_mixture(cfg, tmp_path / "mix2", progress=False)


def test_ranks_read_disjoint_rows(built):
    ranks = [MixtureLoader(built, 4, 16, total_batches=10, rank=r, world_size=2) for r in (0, 1)]
    rows = [
        {tuple(r.tolist()) for _ in range(5) for r in lo.next_batch()["input_ids"]} for lo in ranks
    ]
    assert rows[0] and rows[1] and not rows[0] & rows[1]
    assert ranks[0].rows_drawn == ranks[1].rows_drawn  # every rank draws the same sources


def test_demo_config_is_valid():
    cfg = load_config(MixtureConfig, Path(__file__).parents[1] / "configs/demo/mixture.yaml")
    assert [s.name for s in cfg.sources] == ["general", "bible"]
    assert cfg.sources[1].filter == {"source": "kjv"}
    assert cfg.schedule[0].from_fraction == 0.8
