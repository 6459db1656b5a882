"""Curation and tokenization on Ray Data (`--engine ray`) keep exactly what the local engine
keeps, whatever the workers and block sizes, through a killed worker; on a local Ray started
here with 2 CPUs, as a cluster of one node."""

import json
import os

import numpy as np
import pytest
from test_curate import all_rules_on, build_corpus

from lmforge.data.curate import CurateConfig, curate
from lmforge.data.sources import iter_documents
from lmforge.errors import ConfigError

ray = pytest.importorskip("ray", reason="Ray Data is the optional extra lmforge[ray]")

# What may differ between two runs that keep the same documents: where, how fast, with what.
RUN_FIELDS = {"output", "seconds", "cpu_seconds_by_step", "workers", "engine"}


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A Ray of one node and 2 CPUs for this module; its workers see the fault folder."""
    faults = tmp_path_factory.mktemp("ray-faults")
    os.environ["LMFORGE_RAY_FAULT_DIR"] = str(faults)  # before ray.init: every worker has it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield faults
    ray.shutdown()
    del os.environ["LMFORGE_RAY_FAULT_DIR"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted corpus (exact and near duplicates, junk for every rule, related-but-distinct
    pairs) in three files, curated by the local engine."""
    root = tmp_path_factory.mktemp("planted")
    build_corpus(root / "in")
    (root / "in" / "part-2.jsonl").write_text(
        "".join(json.dumps({"text": t, "source": "third"}) + "\n" for t in ("Hi.", "Yo!") * 3)
    )
    summary = curate(root / "in", root / "local", all_rules_on(), report=root / "local-report",
                     progress=False, workers=1)  # fmt: skip
    return root, summary


def documents(path) -> list[tuple[str, str]]:
    return [(d["text"], d["source"]) for d in iter_documents(path)]


def assert_same_curation(root, local: dict, ray_summary: dict, ray_out, ray_report=None):
    assert documents(ray_out) == documents(root / "local")
    assert {k: v for k, v in ray_summary.items() if k not in RUN_FIELDS} == {
        k: v for k, v in local.items() if k not in RUN_FIELDS
    }
    stats = [json.loads((p / "stats.json").read_text()) for p in (root / "local", ray_out)]
    assert stats[0]["sources"] == stats[1]["sources"] and stats[0]["total"] == stats[1]["total"]
    if ray_report is not None:
        examples = [
            json.loads((p / "removed_examples.json").read_text())
            for p in (root / "local-report", ray_report)
        ]
        assert examples[0] == examples[1]


def test_ray_keeps_the_documents_the_local_engine_keeps(local_ray, planted):
    root, local = planted
    summary = curate(root / "in", root / "ray", all_rules_on(), report=root / "ray-report",
                     progress=False, workers=2, engine="ray")  # fmt: skip
    assert summary["engine"] == "ray" and summary["near_dedup"]["verified_pairs"] >= 10
    assert summary["steps"][1]["documents_removed"] >= 10  # the planted exact copies went
    assert_same_curation(root, local, summary, root / "ray", root / "ray-report")
    assert (root / "ray-report" / "curation.md").read_text().count("\n") > 20


def test_same_documents_with_one_worker_and_tiny_blocks(local_ray, planted):
    root, local = planted
    ctx = ray.data.DataContext.get_current()
    block = ctx.target_max_block_size
    ctx.target_max_block_size = 1 << 15  # tens of rows per block: many tasks, many merges
    try:
        cfg = all_rules_on()
        cfg.batch_docs = 7
        summary = curate(root / "in", root / "ray-1", cfg, progress=False, workers=1, engine="ray")
    finally:
        ctx.target_max_block_size = block
    local = {**local, "config": summary["config"]}  # batch_docs differs, nothing else may
    assert_same_curation(root, local, summary, root / "ray-1")


def test_a_worker_killed_mid_run_is_retried_and_the_output_is_complete(local_ray, planted):
    root, local = planted
    (local_ray / "kill-once").touch()  # the first task to read it SIGKILLs its own worker
    summary = curate(root / "in", root / "ray-killed", all_rules_on(), progress=False,
                     workers=2, engine="ray")  # fmt: skip
    assert not (local_ray / "kill-once").exists()  # a worker did die
    assert_same_curation(root, local, summary, root / "ray-killed")


@pytest.mark.skipif(
    not os.path.exists("/usr/share/wordnet/data.noun"), reason="Debian wordnet-base not installed"
)
def test_ray_equals_local_on_the_default_corpus(local_ray, tmp_path):
    from lmforge.data.corpora import build_default_corpus

    build_default_corpus(tmp_path / "in", max_docs_per_source=150, progress=False)
    local = curate(tmp_path / "in", tmp_path / "local", CurateConfig(), progress=False, workers=1)
    summary = curate(tmp_path / "in", tmp_path / "ray", CurateConfig(), progress=False,
                     workers=2, engine="ray")  # fmt: skip
    assert local["documents_out"] < local["documents_in"]  # something was removed
    assert_same_curation(tmp_path, local, summary, tmp_path / "ray")


def test_an_unreachable_address_is_a_clear_error_at_once(tmp_path, planted):
    root, _ = planted
    with pytest.raises(ConfigError, match=r"cannot reach a Ray cluster at --address 127\.0\.0\.1:1 .*ray start --head"):  # fmt: skip
        curate(root / "in", tmp_path / "out", CurateConfig(), progress=False, engine="ray",
               address="127.0.0.1:1")  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_shards_on_ray_hold_the_local_tokens_documents_and_split(
    local_ray, tmp_path, tiny_corpus, tiny_tokenizer_dir
):
    from lmforge.data.shards import ShardDataset, build_shards
    from lmforge.data.shards_ray import build_shards_on_ray
    from lmforge.tokenizer import Tokenizer

    # Three files, one with empty documents: the index (and so the split) counts across files.
    lines = tiny_corpus.read_text().splitlines()
    (tmp_path / "in").mkdir()
    for k in range(3):
        part = lines[k * 140 : (k + 1) * 140] + ['{"text": "  ", "source": "x"}']
        (tmp_path / "in" / f"p{k}.jsonl").write_text("\n".join(part) + "\n")
    tok = Tokenizer.load(tiny_tokenizer_dir)
    how = {"val_fraction": 0.1, "seed": 3, "shard_tokens": 2000, "progress": False}
    local = build_shards(tmp_path / "in", tok, tmp_path / "local", **how)
    remote = build_shards_on_ray(tmp_path / "in", tok, tmp_path / "ray", workers=2, **how)
    assert len(remote["splits"]["train"]["shards"]) > 3  # rolled within files, one set per file
    for split in ("train", "val"):
        a, b = (ShardDataset(tmp_path / d, split) for d in ("local", "ray"))
        assert a.num_docs == b.num_docs > 0
        assert [a.tokens(i).tolist() for i in range(a.num_docs)] == [
            b.tokens(i).tolist() for i in range(b.num_docs)
        ]
        for key in ("documents", "tokens", "bytes"):
            assert local["splits"][split][key] == remote["splits"][split][key]
    same = {k: v for k, v in local.items() if k != "splits"}
    assert same == {k: v for k, v in remote.items() if k != "splits"}
    assert np.isin(["tokens-00002-00000.bin"], remote["splits"]["train"]["shards"]).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_large_and_small_star_rounds_find_the_components_and_their_keepers(seed):
    """The distributed connected components, their per-partition steps run here on one
    partition: long chains, trees and ties in length; each component ends as a star around
    the document the local engine keeps (the longest, then the first)."""
    from lmforge.data.curate import clusters, keepers
    from lmforge.data.curate import ray_engine as re

    rng = np.random.default_rng(seed)
    n = 300
    chars = rng.integers(10, 15, n)  # few lengths: many ties, broken by id
    chain = rng.permutation(n)[:120]  # one long path, plus random edges
    i = np.concatenate([chain[:-1], rng.integers(0, n, 80)])
    j = np.concatenate([chain[1:], rng.integers(0, n, 80)])
    i, j = i[i != j], j[i != j]
    edges = {"u": i, "cu": chars[i], "v": j, "cv": chars[j]}
    for rounds in range(1, 30):  # noqa: B007 (read after the loop)
        large = re._large_star(re._both_ways(edges))
        edges = re._small_star(re._larger_first(large))
        if len(re._not_a_star(re._roles(edges))["node"]) == 0:
            break
    assert rounds > 1  # the chain needed more than one round
    labels = clusters(n, i, j)
    keep = keepers(labels, chars)
    in_graph = np.unique(np.concatenate([i, j]))
    centre = dict(zip(edges["u"].tolist(), edges["v"].tolist()))
    for x in in_graph.tolist():
        expected = int(np.flatnonzero(keep & (labels == labels[x]))[0])
        assert centre.get(x, x) == expected
