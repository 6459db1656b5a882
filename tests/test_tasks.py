import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from lmforge.cli import main
from lmforge.data.tasks import TaskConfig, build_wordnet_task, load_task, prepare_task, subsample
from lmforge.errors import ConfigError, DataError


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def complaints(tmp_path, text_col="Consumer Complaint"):
    """A small file shaped like the course's dataset: an old label name to merge, a rare class."""
    rows = []
    for i in range(40):
        rows.append(
            [f"my report has wrong information number {i}", "Incorrect information on your report"]
        )
    for i in range(20):
        rows.append(
            [f"they used my credit report without asking {i}", "Improper use of my credit report"]
        )
    for i in range(10):
        rows.append([f"they used your report improperly {i}", "Improper use of your report"])
    for i in range(30):
        rows.append([f"fees I did not expect on my card {i}", "Fees or interest"])
    rows.append(["a lonely complaint", "Rare issue"])
    return write_csv(tmp_path / "cc.csv", [text_col, "Issue", "Product"], [r + ["x"] for r in rows])


def test_course_recipe_merges_drops_rare_and_splits_stratified(tmp_path):
    merge = tmp_path / "merge.json"
    merge.write_text(
        json.dumps(
            {"_comment": "notes", "Improper use of my credit report": "Improper use of your report"}
        )
    )
    cfg = TaskConfig(
        path=str(complaints(tmp_path)),
        text_column="Consumer Complaint",
        label_column="Issue",
        merge_map=str(merge),
        min_count=5,
        val_fraction=0.1,
        seed=42,
    )
    task = prepare_task(cfg, tmp_path / "task")
    assert task.label_names == [
        "Fees or interest",
        "Improper use of your report",
        "Incorrect information on your report",
    ]
    assert "Rare issue" in task.info["dropped_classes"]
    # merged: 20 + 10 examples under the new name, spread over train/val/test stratified
    all_rows = task.train + task.val + task.test
    assert sum(1 for _, y in all_rows if y == 1) == 30
    for y in range(3):  # every class appears in every split
        assert any(lab == y for _, lab in task.val) and any(lab == y for _, lab in task.test)
    # deterministic for a seed, different for another
    again = prepare_task(cfg, tmp_path / "task2")
    assert again.train == task.train
    other = prepare_task(cfg.model_copy(update={"seed": 7}), tmp_path / "task3")
    assert other.train != task.train
    # the saved splits keep label names, not ids
    assert set(
        pq.read_table(tmp_path / "task" / "train.parquet").column("label").to_pylist()
    ) <= set(task.label_names)


def test_cfpb_export_column_name_is_accepted(tmp_path):
    path = complaints(tmp_path, text_col="Consumer complaint narrative")
    cfg = TaskConfig(
        path=str(path), text_column="Consumer Complaint", label_column="Issue", min_count=5
    )
    assert prepare_task(cfg, tmp_path / "t").num_labels == 4


def test_missing_column_names_the_columns_that_exist(tmp_path):
    cfg = TaskConfig(path=str(complaints(tmp_path)), text_column="complaint", label_column="Issue")
    with pytest.raises(
        DataError, match="no column 'complaint'.*Consumer Complaint, Issue, Product"
    ):
        prepare_task(cfg, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_one_class_is_an_error(tmp_path):
    path = write_csv(
        tmp_path / "one.csv", ["text", "label"], [[f"t{i}", "only"] for i in range(10)]
    )
    with pytest.raises(DataError, match="1 class"):
        prepare_task(TaskConfig(path=str(path)), tmp_path / "t")


@pytest.mark.parametrize(
    "merge, error",
    [
        ({"Some other dataset's label": "X"}, "none of the 1 labels"),
        ({"Fees or interest": " "}, "empty label"),
    ],
)
def test_merge_map_that_maps_nothing_or_to_empty_is_an_error(tmp_path, merge, error):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(merge))
    cfg = TaskConfig(
        path=str(complaints(tmp_path)),
        text_column="Consumer Complaint",
        label_column="Issue",
        merge_map=str(bad),
    )
    with pytest.raises(ConfigError, match=error):
        prepare_task(cfg, tmp_path / "t")


def test_given_split_files_and_unknown_labels_are_counted(tmp_path):
    train = write_csv(
        tmp_path / "train.csv",
        ["text", "label"],
        [[f"a {i}", "a"] for i in range(5)] + [[f"b {i}", "b"] for i in range(5)],
    )
    test = write_csv(
        tmp_path / "test.csv", ["text", "label"], [["a x", "a"], ["c x", "c"], ["", "b"]]
    )
    task = prepare_task(
        TaskConfig(path=str(train), test_path=str(test), val_fraction=0.2), tmp_path / "t"
    )
    assert [y for _, y in task.test] == [0, -1, 1]
    assert task.info["unknown_labels"]["test"] == 1
    assert task.test[2][0] == ""  # an empty text is kept (and scored), not a crash


def test_jsonl_and_parquet_inputs(tmp_path):
    rows = [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(20)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = prepare_task(TaskConfig(path=str(tmp_path / "d.jsonl")), tmp_path / "t")
    assert task.num_labels == 2 and len(task.train + task.val + task.test) == 20
    pq.write_table(pq.read_table(tmp_path / "t" / "train.parquet"), tmp_path / "p.parquet")
    assert (
        prepare_task(
            TaskConfig(path=str(tmp_path / "p.parquet"), val_fraction=0.0, test_fraction=0.0),
            tmp_path / "t2",
        ).num_labels
        == 2
    )


def test_a_local_hf_datasets_directory_with_class_labels(tmp_path):
    """`datasets.save_to_disk` output: splits are kept (validation -> val) and ClassLabel ids
    become their names."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )

    def split(n, offset):
        return datasets.Dataset.from_dict(
            {
                "text": [f"review {offset + i}" for i in range(n)],
                "label": [i % 2 for i in range(n)],
            },
            features=features,
        )

    dd = datasets.DatasetDict(
        {"train": split(30, 0), "validation": split(10, 100), "test": split(10, 200)}
    )
    dd["train"] = dd["train"].select(range(20))  # an index mapping must be honoured
    dd.save_to_disk(str(tmp_path / "hf"))
    task = prepare_task(TaskConfig(path=str(tmp_path / "hf")), tmp_path / "t")
    assert task.label_names == ["neg", "pos"]
    assert (len(task.train), len(task.val), len(task.test)) == (20, 10, 10)
    assert task.val[0][0] == "review 100"


def test_subsample_is_stratified_and_seeded():
    rows = [(f"t{i}", 0) for i in range(90)] + [(f"u{i}", 1) for i in range(10)]
    s = subsample(rows, 20, seed=0)
    ys = np.array([y for _, y in s])
    assert len(s) == 20 and (ys == 1).sum() == 2
    assert subsample(rows, 20, seed=0) == s
    assert subsample(rows, 0, seed=0) is rows


def test_wordnet_task_from_a_tiny_wordnet(tmp_path):
    from test_corpora import ADJ, HEADER, NOUN, VERB

    wn = tmp_path / "wn"
    wn.mkdir()
    (wn / "data.noun").write_text(HEADER + NOUN)
    (wn / "data.verb").write_text(HEADER + VERB)
    (wn / "data.adj").write_text(HEADER + ADJ)
    (wn / "data.adv").write_text(HEADER)
    task = build_wordnet_task(
        tmp_path / "task", wordnet_dir=str(wn), val_fraction=0.0, test_fraction=0.0
    )
    texts = dict((t, task.label_names[y]) for t, y in task.train)
    assert texts["a member of the genus Canis"] == "noun.animal"  # quoted examples removed
    assert texts["draw air into, and expel out of, the lungs"] == "verb.body"
    assert load_task(tmp_path / "task").label_names == task.label_names


def test_cli_task_prepare_and_print_config(tmp_path, capsys):
    path = complaints(tmp_path)
    args = [
        "data",
        "task",
        "--out",
        str(tmp_path / "t"),
        f"path={path}",
        "text_column=Consumer Complaint",
        "label_column=Issue",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_labels"] == 5 and out["rows"]["train"] > 0
    assert main(["data", "task", "--out", str(tmp_path / "t"), "min_cont=5"]) == 2
    assert "did you mean 'min_count'" in capsys.readouterr().err


def test_the_course_recipe_file_loads_a_local_copy(tmp_path):
    """configs/course/consumer-complaints-task.yaml with path pointed at a local file of the
    same columns: the shipped merge map applies and min_count 5 drops the rare class."""
    from lmforge.config import load_config

    cfg = load_config(
        TaskConfig, "configs/course/consumer-complaints-task.yaml", [f"path={complaints(tmp_path)}"]
    )
    assert (cfg.text_column, cfg.label_column, cfg.min_count, cfg.seed, cfg.max_length) == (
        "Consumer Complaint",
        "Issue",
        5,
        42,
        128,
    )
    task = prepare_task(cfg, tmp_path / "cc")
    assert "Improper use of my credit report" not in task.label_names  # merged into the new name
    assert task.info["merged_labels"] == 36
    assert task.info["dropped_classes"] == ["Rare issue"]


@pytest.mark.parametrize("group", [0, 4])
def test_classification_batches_cover_each_epoch_once_and_resume_exactly(group):
    from lmforge.data.tasks import ClassificationBatches

    rng = np.random.default_rng(0)
    ids = [[5] * int(n) for n in rng.integers(1, 60, size=103)]
    labels = list(range(103))  # a row's label names it

    def make():
        return ClassificationBatches(ids, labels, 8, pad_id=0, seed=3, group_by_length=group)

    loader = make()
    epoch = [loader.next_batch() for _ in range(loader.steps_per_epoch)]
    seen = [y for b in epoch for y in b["labels"].tolist()]
    assert sorted(seen) == labels  # every row once
    assert [len(b["labels"]) for b in epoch][:-1] == [8] * 12  # only the last batch is short
    # a fresh loader given the state after 5 batches continues with the same batches, into
    # the next epoch
    loader = make()
    for _ in range(5):
        loader.next_batch()
    state = loader.state_dict()
    expected = [loader.next_batch()["labels"].tolist() for _ in range(20)]
    resumed = make()
    resumed.load_state_dict(state)
    assert [resumed.next_batch()["labels"].tolist() for _ in range(20)] == expected


def test_group_by_length_pads_less_and_still_shuffles():
    from lmforge.data.tasks import ClassificationBatches

    rng = np.random.default_rng(1)
    ids = [[5] * int(n) for n in rng.integers(1, 128, size=800)]

    def padded(group, seed=0):
        loader = ClassificationBatches(ids, [0] * 800, 16, 0, seed=seed, group_by_length=group)
        batches = [loader.next_batch()["input_ids"] for _ in range(loader.steps_per_epoch)]
        assert (
            sum(b.shape[0] * b.shape[1] for b in batches)
            == 16 * sum(loader.padded_lengths()[: len(batches) - 1]) + batches[-1].numel()
        )
        return batches

    plain, grouped = padded(0), padded(10)
    assert sum(b.numel() for b in grouped) < 0.7 * sum(b.numel() for b in plain)
    # rows of like length per batch, but the batches' lengths do not run in sorted order
    lengths = [b.shape[1] for b in grouped]
    assert lengths != sorted(lengths)
    # another seed draws other batches
    assert [b.shape[1] for b in padded(10, seed=1)] != lengths


def test_token_cache_is_read_back_and_keyed_by_texts_tokenizer_and_length(
    tmp_path, tiny_tokenizer_dir, monkeypatch
):
    from lmforge.data import tasks
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_tokenizer_dir)
    texts = ["the cat sat", "a much longer sentence about a dog " * 3, ""]
    want = tasks.encode_examples(tok, texts, 8)
    assert tasks.encode_cached(tok, texts, 8, tmp_path) == want  # written
    assert len(list((tmp_path / "tokens").glob("*.npz"))) == 1
    calls = []
    real = tasks.encode_examples
    monkeypatch.setattr(tasks, "encode_examples", lambda *a: calls.append(a) or real(*a))
    assert tasks.encode_cached(tok, texts, 8, tmp_path) == want  # read back, not encoded
    assert calls == []
    # another length, an edited text or another tokenizer: encoded again, never a stale hit
    assert tasks.encode_cached(tok, texts, 4, tmp_path) == real(tok, texts, 4)
    edited = [*texts[:2], "new"]
    assert tasks.encode_cached(tok, edited, 8, tmp_path) == real(tok, edited, 8)
    tok.set_role("eos", tok.bos_id)
    tasks.encode_cached(tok, texts, 8, tmp_path)
    assert len(calls) == 3
    # a damaged file is encoded again and replaced
    for f in (tmp_path / "tokens").glob("*.npz"):
        f.write_bytes(b"not a zip")
    assert tasks.encode_cached(tok, edited, 8, tmp_path) == real(tok, edited, 8)
