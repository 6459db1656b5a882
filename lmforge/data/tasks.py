"""Labelled text classification tasks: read, map columns, merge labels, drop rare classes,
split stratified, and save as a task directory every classify stage reads.

    <task>/train.parquet val.parquet test.parquet   columns: text, label (the label *name*)
    <task>/labels.json                               {"names": [...], "train_counts": [...]}
    <task>/task.json                                 how it was made and what was dropped

Label ids are the position in ``names`` (sorted), and names travel with every report.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from pydantic import Field

from lmforge.config import Section
from lmforge.data import corpora
from lmforge.data.sources import list_files
from lmforge.errors import ConfigError, DataError
from lmforge.utils import staging_dir, write_json

SPLITS = ("train", "val", "test")

# The CFPB public export (consumerfinance.gov) names the course's columns differently.
CFPB_COLUMNS = {"Consumer complaint narrative": "Consumer Complaint"}


class TaskConfig(Section):
    # A task directory (from `lmforge data wordnet-task` or an earlier prepare), or raw data:
    # a csv / jsonl / parquet file or directory, a local HF `datasets` directory
    # (save_to_disk), or "hf:<dataset name>" (needs the network or the HF cache).
    path: str = "data/wordnet-task"
    text_column: str = "text"
    label_column: str = "label"
    # Renames applied to the raw columns first, e.g. {"Consumer complaint narrative": "Consumer Complaint"}.
    column_map: dict[str, str] = {}
    merge_map: str | None = None  # a JSON file {"old label": "new label"}
    min_count: int = Field(1, ge=1)  # classes with fewer training examples are dropped
    val_fraction: float = Field(0.1, ge=0, lt=1)  # carved from train, stratified
    test_fraction: float = Field(0.1, ge=0, lt=1)  # used only when the data has no test split
    seed: int = 42
    # Given split files instead of a carved split (each like `path`).
    val_path: str | None = None
    test_path: str | None = None
    max_length: int = 128  # tokens; longer texts are truncated (and counted)
    # Subsample the training split (stratified, seeded) to fit a time budget; 0 = all.
    max_train_examples: int = 0
    max_eval_examples: int = 0


@dataclass
class Task:
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    test: list[tuple[str, int]]
    label_names: list[str]
    info: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def train_counts(self) -> list[int]:
        c = Counter(y for _, y in self.train)
        return [c.get(i, 0) for i in range(self.num_labels)]

    def split(self, name: str) -> list[tuple[str, int]]:
        if name not in SPLITS:
            raise ConfigError(f"unknown split '{name}'; use one of {', '.join(SPLITS)}")
        return getattr(self, name)


# --------------------------------------------------------------------------------------------
# Reading raw labelled rows
# --------------------------------------------------------------------------------------------


def read_table(path: str) -> dict[str, pa.Table]:
    """Raw data -> {split name: table}. A single file or a directory of files is one split, 'train'."""
    if path.startswith("hf:"):
        return _read_hf(path[3:], hub=True)
    p = Path(path)
    if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "dataset_info.json").exists()):
        return _read_hf(str(p), hub=False)
    tables = []
    for file in list_files(p):
        tables.append(_read_file(file))
    try:
        return {"train": pa.concat_tables(tables, promote_options="default")}
    except pa.ArrowInvalid as e:
        raise DataError(f"the files under {path} have incompatible columns: {e}") from None


def _read_file(file: Path) -> pa.Table:
    suffix = file.suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(file)
        if suffix == ".csv":
            # Everything as strings: labels like "01" must not become integers.
            opts = pacsv.ConvertOptions(strings_can_be_null=False, column_types=None)
            table = pacsv.read_csv(file, convert_options=opts)
            return table.cast(pa.schema([(n, pa.string()) for n in table.column_names]))
        if suffix == ".jsonl":
            return pajson.read_json(file)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{file}: cannot read it as {suffix[1:]}: {e}") from None
    raise DataError(
        f"{file}: a task needs csv, jsonl or parquet files (with a text and a label column)"
    )


def _read_hf(name: str, hub: bool) -> dict[str, pa.Table]:
    try:
        import datasets  # optional: only a Hugging Face dataset name needs it
    except ImportError:
        raise DataError(
            f"reading the HF dataset '{name}' needs the `datasets` package: pip install datasets"
        ) from None
    try:
        ds = datasets.load_dataset(name) if hub else datasets.load_from_disk(name)
    except Exception as e:  # offline without a cache, a typo, ...: say how to get the data
        raise DataError(
            f"cannot load the dataset '{name}' ({type(e).__name__}: {e}). Offline, download it once "
            "where there is network (datasets.load_dataset(name).save_to_disk(dir)) and give that directory."
        ) from None
    if isinstance(ds, datasets.Dataset):
        ds = {"train": ds}
    names = {"validation": "val", "valid": "val", "dev": "val"}
    return {names.get(k, k): _hf_table(d, datasets) for k, d in ds.items()}


def _hf_table(d, datasets) -> pa.Table:
    # The arrow view honours select()/filter() index mappings; ClassLabel columns (integers on
    # disk) become their names, so labels are names everywhere as for csv files.
    table = d.with_format("arrow")[:]
    for name, feature in d.features.items():
        if isinstance(feature, datasets.ClassLabel):
            ids = table.column(name).to_pylist()
            names = [feature.names[i] if i is not None and i >= 0 else None for i in ids]
            table = table.set_column(
                table.column_names.index(name), name, pa.array(names, pa.string())
            )
    return table


def _rows(table: pa.Table, cfg: TaskConfig, where: str) -> list[tuple[str, str]]:
    renames = {**CFPB_COLUMNS, **cfg.column_map}
    table = table.rename_columns([renames.get(c, c) for c in table.column_names])
    for col in (cfg.text_column, cfg.label_column):
        if col not in table.column_names:
            raise DataError(
                f"{where}: no column '{col}'. Columns: {', '.join(table.column_names)}. "
                f"Set task.text_column / task.label_column (or task.column_map) to one of them."
            )
    texts = table.column(cfg.text_column).to_pylist()
    labels = table.column(cfg.label_column).to_pylist()
    rows = [(t if t is not None else "", str(y)) for t, y in zip(texts, labels) if y is not None]
    if rows and not any(str(t).strip() for t, _ in rows):
        others = [c for c in table.column_names if c not in (cfg.text_column, cfg.label_column)]
        raise DataError(
            f"{where}: all {len(rows)} texts in column '{cfg.text_column}' are empty, so there is "
            "nothing to learn from or to classify. Set task.text_column to the column that holds "
            f"the text (other columns: {', '.join(others) or 'none'}), or fill it in"
        )
    return rows


def _apply_merge(rows, merge: dict[str, str]):
    return [(t, merge.get(y, y)) for t, y in rows]


def _stratified_take(rows, fraction: float, seed: int):
    """Split rows into (rest, taken) with `fraction` of each class taken (at least one of a
    class with 2+ examples, so every class can be evaluated), seeded."""
    by_class: dict[str, list] = {}
    for r in rows:
        by_class.setdefault(r[1], []).append(r)
    rng = random.Random(seed)
    rest, taken = [], []
    for label in sorted(by_class):
        items = by_class[label]
        rng.shuffle(items)
        k = round(len(items) * fraction)
        if fraction > 0 and k == 0 and len(items) >= 2:
            k = 1
        taken += items[:k]
        rest += items[k:]
    rng.shuffle(rest)
    rng.shuffle(taken)
    return rest, taken


def prepare_task(cfg: TaskConfig, out_dir: str | os.PathLike) -> Task:
    """Raw labelled data -> a task directory (atomic). Returns the task."""
    raw = read_table(cfg.path)
    splits = {name: _rows(t, cfg, f"{cfg.path} [{name}]") for name, t in raw.items()}
    if cfg.val_path:
        splits["val"] = _rows(read_table(cfg.val_path)["train"], cfg, cfg.val_path)
    if cfg.test_path:
        splits["test"] = _rows(read_table(cfg.test_path)["train"], cfg, cfg.test_path)
    if "train" not in splits:
        raise DataError(f"{cfg.path} has no train split (found: {', '.join(splits)})")
    info: dict = {"source": cfg.path, "raw_rows": {k: len(v) for k, v in splits.items()}}
    # Training rows without text teach nothing: most rows of the CFPB export have no narrative
    # (the consumer did not consent to publish it). They are dropped and counted before val and
    # test are carved from train; a given evaluation file keeps its rows (each is scored).
    info["empty_texts_dropped"] = sum(1 for t, _ in splits["train"] if not t.strip())
    splits["train"] = [r for r in splits["train"] if r[0].strip()]
    before_merge = Counter(y for _, y in splits["train"])
    if cfg.merge_map:
        merge = _load_merge_map(cfg.merge_map, {y for rows in splits.values() for _, y in rows})
        splits = {k: _apply_merge(v, merge) for k, v in splits.items()}
        info["merged_labels"] = len(merge)
    info["labels_before_min_count"] = len({y for _, y in splits["train"]})

    # Rare classes are dropped by their count in the training data (before any carving).
    counts = Counter(y for _, y in splits["train"])
    keep = {y for y, c in counts.items() if c >= cfg.min_count}
    dropped = sorted(set(counts) - keep)
    info["dropped_classes"] = dropped
    if len(keep) < 2 and cfg.merge_map and len(before_merge) >= 2 and len(counts) < 2:
        raise DataError(
            f"task.merge_map {cfg.merge_map} collapses every training label of {cfg.path} into "
            f"'{next(iter(counts))}' ({_listing(sorted(before_merge))} -> one class); "
            "classification needs two or more. Map the labels to at least two new labels, or "
            "leave out the ones to keep as they are"
        )
    if len(keep) < 2:
        raise DataError(
            f"{cfg.path}: the label column '{cfg.label_column}' has {len(keep)} class(es) with at least "
            f"{cfg.min_count} examples; classification needs two or more (check the column or lower task.min_count)"
        )
    splits = {k: [r for r in v if r[1] in keep or k != "train"] for k, v in splits.items()}
    for name, path in (("val", cfg.val_path), ("test", cfg.test_path)):
        if path:
            check_eval_labels(
                name, [y for _, y in splits[name]], sorted(keep), f"task.{name}_path {path}"
            )

    if "test" not in splits:
        splits["train"], splits["test"] = _stratified_take(
            splits["train"], cfg.test_fraction, cfg.seed + 1
        )
    if "val" not in splits:
        splits["train"], splits["val"] = _stratified_take(
            splits["train"], cfg.val_fraction, cfg.seed
        )

    names = sorted(keep)
    out_dir = Path(out_dir)
    with staging_dir(out_dir) as tmp:
        for name in SPLITS:
            rows = splits.get(name, [])
            pq.write_table(
                pa.table({"text": [t for t, _ in rows], "label": [y for _, y in rows]}),
                tmp / f"{name}.parquet",
            )
        write_json(
            tmp / "labels.json",
            {
                "names": names,
                "train_counts": [Counter(y for _, y in splits["train"])[n] for n in names],
            },
        )
        info.update(
            rows={k: len(splits.get(k, [])) for k in SPLITS},
            num_labels=len(names),
            config=cfg.model_dump(),
        )
        write_json(tmp / "task.json", info)
    return load_task(out_dir)


def _listing(items: list[str], n: int = 5) -> str:
    shown = ", ".join(f"'{x}'" for x in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def check_eval_labels(split: str, labels: list, classes: list[str], where: str) -> None:
    """Refuse an evaluation split that has rows but none with a label the model is trained on:
    nothing in it can be scored. ``labels``: label names, or ids (-1: a name not in training)."""

    def known(y) -> bool:
        return y >= 0 if isinstance(y, int) else y in classes

    if labels and not any(known(y) for y in labels):
        names = sorted({y for y in labels if isinstance(y, str)})
        seen = f" (its labels: {_listing(names)})" if names else ""
        raise DataError(
            f"{where}: none of the {len(labels)} {split} examples has a label that occurs in "
            f"training{seen}; the training labels are {_listing(classes)}. Nothing in the "
            f"{split} split could be scored: label it with the training label names (or map "
            "them with task.merge_map), or give a split of the same task"
        )


def _load_merge_map(path: str, labels: set[str]) -> dict[str, str]:
    try:
        merge = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"task.merge_map: {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"task.merge_map: {path} is not valid JSON ({e})") from None
    if isinstance(merge, dict):  # keys like "_comment" carry notes, not labels
        merge = {k: v for k, v in merge.items() if not k.startswith("_")}
    if not isinstance(merge, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in merge.items()
    ):
        raise ConfigError(
            f"task.merge_map: {path} must be a JSON object of old label -> new label (strings)"
        )
    empty = [k for k, v in merge.items() if not v.strip()]
    if empty:
        raise ConfigError(
            f"task.merge_map: {path} maps {empty[:3]} to an empty label; give every old label a new one"
        )
    if merge and not (set(merge) & labels):
        raise ConfigError(
            f"task.merge_map: none of the {len(merge)} labels in {path} occurs in the data "
            f"(e.g. '{next(iter(merge))}'); is it the map for this dataset and label column?"
        )
    return merge


def is_task_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "labels.json").is_file() and (p / "train.parquet").is_file()


def load_task(path: str | os.PathLike) -> Task:
    """A task directory -> Task. Labels unknown to labels.json in val/test get id -1 (counted)."""
    p = Path(path)
    if not is_task_dir(p):
        raise DataError(
            f"{p} is not a task directory (labels.json + train/val/test.parquet). Build one with "
            "`lmforge data wordnet-task --out DIR` or let `classify train` prepare it from raw data."
        )
    labels = json.loads((p / "labels.json").read_text())
    names = labels["names"]
    index = {n: i for i, n in enumerate(names)}
    out, unknown = {}, {}
    for name in SPLITS:
        f = p / f"{name}.parquet"
        t = pq.read_table(f) if f.exists() else pa.table({"text": [], "label": []})
        rows = [
            (x, index.get(str(y), -1))
            for x, y in zip(t.column("text").to_pylist(), t.column("label").to_pylist())
        ]
        unknown[name] = sum(1 for _, y in rows if y < 0)
        out[name] = rows
    info = json.loads((p / "task.json").read_text()) if (p / "task.json").exists() else {}
    info["unknown_labels"] = unknown
    return Task(out["train"], out["val"], out["test"], names, info)


def subsample(rows: list[tuple[str, int]], n: int, seed: int) -> list[tuple[str, int]]:
    """A seeded stratified subsample of n rows (every class keeps at least one row if it can)."""
    if not n or n >= len(rows):
        return rows
    by_class: dict[int, list] = {}
    for r in rows:
        by_class.setdefault(r[1], []).append(r)
    rng = random.Random(seed)
    frac = n / len(rows)
    taken = []
    for y in sorted(by_class):
        items = by_class[y]
        rng.shuffle(items)
        taken += items[: max(1, round(len(items) * frac))]
    rng.shuffle(taken)
    return taken


def resolve_task(cfg: TaskConfig, prepared_dir: str | os.PathLike) -> Task:
    """A task directory as is, or raw data prepared into ``prepared_dir`` first."""
    if is_task_dir(cfg.path):
        task = load_task(cfg.path)
        if task.train and not any(str(t).strip() for t, _ in task.train):
            raise DataError(
                f"{cfg.path}/train.parquet: all {len(task.train)} texts are empty, so there is "
                "nothing to learn from; rebuild the task from the column that holds the text "
                "(task.text_column)"
            )
        return task
    if not cfg.path.startswith("hf:") and not Path(cfg.path).exists():
        raise ConfigError(
            f"task.path '{cfg.path}' does not exist. Build the default task with "
            f"`lmforge data wordnet-task --out {cfg.path}` or point task.path at a csv/jsonl/parquet file."
        )
    return prepare_task(cfg, prepared_dir)


# --------------------------------------------------------------------------------------------
# The offline default task: WordNet definition -> lexicographer category (45 classes)
# --------------------------------------------------------------------------------------------


def build_wordnet_task(
    out_dir: str | os.PathLike,
    seed: int = 42,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    wordnet_dir: str | None = None,
) -> Task:
    """One row per synset: text = its definition (quoted examples removed), label = its lexname.

    Splits are stratified by label with a seed; duplicate definitions keep their first synset
    so the same text never sits in two splits.
    """

    kwargs = {"wordnet_dir": wordnet_dir} if wordnet_dir else {}
    seen, rows = set(), []
    for syn in corpora.iter_wordnet_synsets(**kwargs):
        text = syn.definition.strip()
        if text and text not in seen:
            seen.add(text)
            rows.append((text, syn.lexname))
    rest, test = _stratified_take(rows, test_fraction, seed + 1)
    train, val = _stratified_take(rest, val_fraction, seed)
    names = sorted({y for _, y in rows})
    out_dir = Path(out_dir)
    with staging_dir(out_dir) as tmp:
        for name, split in (("train", train), ("val", val), ("test", test)):
            pq.write_table(
                pa.table({"text": [t for t, _ in split], "label": [y for _, y in split]}),
                tmp / f"{name}.parquet",
            )
        counts = Counter(y for _, y in train)
        write_json(
            tmp / "labels.json", {"names": names, "train_counts": [counts[n] for n in names]}
        )
        write_json(
            tmp / "task.json",
            {
                "source": "wordnet (Debian wordnet-base): definition -> lexicographer file",
                "rows": {"train": len(train), "val": len(val), "test": len(test)},
                "num_labels": len(names),
                "duplicate_definitions_dropped": sum(
                    1 for _ in corpora.iter_wordnet_synsets(**kwargs)
                )
                - len(rows),
                "seed": seed,
            },
        )
    return load_task(out_dir)


# --------------------------------------------------------------------------------------------
# Token batches for classifiers
# --------------------------------------------------------------------------------------------


def encode_examples(
    tokenizer, texts: list[str], max_length: int
) -> tuple[list[list[int]], list[bool]]:
    """Texts in the tokenizer's template (lmforge: BOS text EOS; BERT: [CLS] text [SEP]; Qwen2.5:
    the text alone), cut to max_length. Returns ids and, per example, whether it was truncated."""
    return tokenizer.encode_for_classification(list(texts), max_length)


def encode_cached(
    tokenizer, texts: list[str], max_length: int, cache_dir: str | os.PathLike | None
) -> tuple[list[list[int]], list[bool]]:
    """`encode_examples`, read from ``cache_dir`` when these texts were encoded before with
    this tokenizer and max_length (a CFPB-sized split of 500k rows takes minutes to tokenize on
    2 cores; the course's three recipes read the same task). The key hashes the texts, the
    tokenizer's JSON and its special tokens, so an edited task or another tokenizer is a miss,
    never a stale hit. Files are numpy arrays (no pickles), written atomically."""
    if cache_dir is None:
        return encode_examples(tokenizer, texts, max_length)
    h = hashlib.sha256(f"{tokenizer.fingerprint()}|{sorted(tokenizer.specials.items())}|".encode())
    h.update(f"{max_length}|{len(texts)}".encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    path = Path(cache_dir) / "tokens" / f"{h.hexdigest()[:24]}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                flat, offsets, truncated = z["ids"], z["offsets"], z["truncated"]
            if len(offsets) == len(texts) + 1:
                ids = [flat[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
                return ids, truncated.tolist()
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is encoded again and replaced
    ids, truncated = encode_examples(tokenizer, texts, max_length)
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in ids], out=offsets[1:])
    flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, ids=flat, offsets=offsets, truncated=np.array(truncated, dtype=bool))
        os.replace(tmp, path)
    except OSError as e:  # a read-only task directory: the run goes on without a cache
        tmp.unlink(missing_ok=True)
        print(f"[task] token cache not written ({e})")
    return ids, truncated


def pad_batch(seqs: list[list[int]], pad_id: int, side: str = "right") -> dict:
    import torch  # `lmforge data task` prepares a task without torch (seconds to import)

    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "left":
            ids[i, n - len(s) :], mask[i, n - len(s) :] = torch.tensor(s), 1
        else:
            ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    return {"input_ids": ids, "attention_mask": mask}


class ClassificationBatches:
    """Shuffled padded batches over epochs; deterministic for a seed, resumable by position.

    ``group_by_length`` (transformers' option of that name, the same idea): each epoch's shuffled
    order is cut into mega-batches of ``group_by_length`` batches, each sorted by length and cut
    into batches whose order is then shuffled. A batch pads to its own longest row, so rows of
    like length cut the padding a step computes on (CFPB narratives run from 5 to 128+ tokens)
    while each batch is still a random draw of the data. 0: plain shuffled batches.
    """

    def __init__(
        self,
        ids: list[list[int]],
        labels: list[int],
        batch_size: int,
        pad_id: int,
        seed: int = 0,
        padding_side: str = "right",
        teacher_logits=None,
        group_by_length: int = 0,
    ):
        keep = [i for i, y in enumerate(labels) if y >= 0]
        self.ids, self.labels = [ids[i] for i in keep], [labels[i] for i in keep]
        # distillation: the teacher's logits for each example, in the same order
        self.teacher = None if teacher_logits is None else teacher_logits[keep]
        if not self.ids:
            raise DataError("no training examples with a known label")
        self.batch_size, self.pad_id, self.seed, self.side = batch_size, pad_id, seed, padding_side
        self.group = group_by_length
        self.epoch, self.pos = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        """The epoch's example order; consecutive runs of batch_size rows are its batches (only
        the last may be short)."""
        order = list(range(len(self.ids)))
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        rng.shuffle(order)
        if not self.group:
            return order
        size = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), size):
            mega = sorted(order[start : start + size], key=lambda i: len(self.ids[i]))
            batches += [mega[b : b + self.batch_size] for b in range(0, len(mega), self.batch_size)]
        # the short batch stays last, so positions keep meaning "rows consumed"
        short = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        rng.shuffle(batches)
        return [i for b in batches + short for i in b]

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.ids) // self.batch_size)

    def padded_lengths(self) -> list[int]:
        """The padded length of each of this epoch's batches (what a step computes on)."""
        return [
            max(len(self.ids[i]) for i in self._order[s : s + self.batch_size])
            for s in range(0, len(self._order), self.batch_size)
        ]

    def next_batch(self) -> dict:
        import torch  # as in pad_batch

        if self.pos >= len(self._order):
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._permutation()
        idx = self._order[self.pos : self.pos + self.batch_size]
        self.pos += len(idx)
        batch = pad_batch([self.ids[i] for i in idx], self.pad_id, self.side)
        batch["labels"] = torch.tensor([self.labels[i] for i in idx], dtype=torch.long)
        if self.teacher is not None:
            batch["teacher_logits"] = torch.as_tensor(self.teacher[idx]).float()
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._permutation()
