"""Data mixtures: several token sources drawn in chosen proportions that may change over training.

A mixture directory (``build_mixture``) holds one shards directory per source and a manifest:

    mixture.json   the resolved config, documents/tokens/bytes per source and split, tokenizer
    <name>/        the shards of a source built from its `path` (layout: data/shards.py)

A source given as prebuilt `shards` is used in place; mixture.json records its absolute path.

Semantics:

- **Weights are shares of training tokens.** Every row of a batch is seq_len + 1 tokens from
  one source, so drawing a row's source with probability proportional to the weights gives token
  shares equal to the weights. Weights are relative (normalised to sum 1). The draws are
  independent, so over n rows a share lands within about sqrt(w (1 - w) / n) of its weight;
  ``MixtureLoader.realised()`` reports what was actually drawn.
- **Epochs** say how many passes over a source's training tokens the run should make. The run's
  length is known only to the loader (total_batches x batch_size x world_size x (seq_len + 1)
  tokens), so that is where ``epochs`` becomes a share: epochs x train tokens / run tokens.
  Sources given by weight split what is left in proportion to their weights; when no source has
  a positive weight, the epoch shares are scaled up to fill the run (the epochs are then relative).
- **Schedule: step changes.** A phase ``{from_fraction: f, weights: {...}}`` is a complete mix,
  in force from fraction f of the run's batches until the next phase; sources it does not name
  get weight 0 in it. Before the first phase the sources' own weights apply. The position is
  batches drawn / total_batches, and a whole batch is drawn under one phase. Step changes rather
  than interpolation: "up-weight a domain in the last 20%" (the annealing mixes of MiniCPM,
  Hu et al. 2024, and Llama 3, Dubey et al. 2024) is a step, and its boundary is exact in logs.
  Epochs are exact only for sources whose share no phase changes.
- **Determinism.** The sources of batch i's rows are drawn by a generator seeded with
  (seed, i), so they depend on nothing but the seed and the batch index. Each source is read by
  its own ``PackedLoader`` (BOS-aligned packing, a seeded permutation per epoch), so packing is
  the same as in pre-training. ``state_dict()`` holds the batch counter and every source's
  position: a resumed run reads exactly the batches an uninterrupted one would.
- A source with weight 0 in every phase is built but never drawn; it still has a val split, so
  a stage can report its val loss (a held-out domain).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from pydantic import Field, model_validator

from lmforge.config import Section
from lmforge.data.shards import PackedLoader, ShardDataset, build_shards, shards_match
from lmforge.data.sources import iter_file, list_files
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import Tokenizer
from lmforge.utils import read_json, staging_dir, write_json

MIXTURE_FORMAT = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Scalar = str | int | float | bool


class SourceSpec(Section):
    name: str  # a directory name: letters, digits, _ . -
    # Exactly one of: raw data (txt / jsonl / parquet / csv file or directory), tokenized here,
    # or an already built shards directory, used in place.
    path: str | None = None
    shards: str | None = None
    text_column: str = "text"
    # Keep only documents whose column equals the value, or one of a list of values (compared as
    # text), e.g. {source: kjv} or {source: [wordnet, gcide]}. Only with `path`.
    filter: dict[str, Scalar | list[Scalar]] | None = None
    # Exactly one of: a share of training tokens (relative), or passes over the source in the run.
    weight: float | None = Field(None, ge=0)
    epochs: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _check(self):
        where = f"source '{self.name}'"
        if not NAME_PATTERN.match(self.name) or self.name == "mixture.json":
            raise ValueError(
                f"{where}: a name must be a plain directory name (letters, digits, _ . -), "
                "e.g. 'bible'"
            )
        if (self.path is None) == (self.shards is None):
            raise ValueError(
                f"{where} needs exactly one of `path` (raw data to tokenize) or `shards` "
                "(a built shards directory)"
            )
        if (self.weight is None) == (self.epochs is None):
            raise ValueError(
                f"{where} needs exactly one of `weight` (share of training tokens) or `epochs` "
                "(passes over the source during the run)"
            )
        if self.filter is not None and self.shards is not None:
            raise ValueError(
                f"{where}: `filter` selects documents while tokenizing, so it needs `path`, "
                "not prebuilt `shards`"
            )
        if self.filter is not None and not self.filter:
            raise ValueError(f"{where}: `filter` is empty; name a column and a value, or drop it")
        return self


class SchedulePhase(Section):
    from_fraction: float = Field(gt=0, lt=1)  # of the run's batches
    weights: dict[str, float]  # a complete mix: sources not named get 0

    @model_validator(mode="after")
    def _check(self):
        negative = [n for n, w in self.weights.items() if w < 0]
        if negative:
            raise ValueError(
                f"schedule phase from {self.from_fraction}: negative weight for {', '.join(negative)}"
            )
        if sum(self.weights.values()) <= 0:
            raise ValueError(
                f"schedule phase from {self.from_fraction}: all weights are zero; give at least "
                "one source a positive weight"
            )
        return self


class MixtureConfig(Section):
    tokenizer: str = "runs/demo/tokenizer"
    sources: list[SourceSpec]
    schedule: list[SchedulePhase] = []
    seed: int = Field(0, ge=0)  # of the train/val split of sources built here
    val_fraction: float = Field(0.01, gt=0, lt=1)  # documents held out per source built here

    @model_validator(mode="after")
    def _check(self):
        names = [s.name for s in self.sources]
        if not names:
            raise ValueError("`sources` is empty; a mixture needs at least one source")
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"source names must be unique; repeated: {', '.join(duplicated)}")
        if all((s.weight or 0) == 0 and (s.epochs or 0) == 0 for s in self.sources):
            raise ValueError(
                "every source has weight (or epochs) 0, so nothing could be drawn; give at least "
                "one source a positive weight"
            )
        last = 0.0
        for i, phase in enumerate(self.schedule):
            if phase.from_fraction <= last:
                raise ValueError(
                    f"schedule[{i}].from_fraction {phase.from_fraction} must be above the previous "
                    f"phase's ({last}); list phases in the order they start"
                )
            last = phase.from_fraction
            for name in phase.weights:
                if name not in names:
                    close = difflib.get_close_matches(name, names, n=1)
                    hint = (
                        f"did you mean '{close[0]}'?" if close else f"sources: {', '.join(names)}"
                    )
                    raise ValueError(
                        f"schedule[{i}].weights names '{name}', which is not a source; {hint}"
                    )
        return self


# ---------------------------------------------------------------------------------- building


def _check_inputs(cfg: MixtureConfig, out: Path, tokenizer: Tokenizer) -> None:
    """Every input problem we can see before tokenizing anything."""
    for s in cfg.sources:
        if s.path is not None and not Path(s.path).exists():
            raise ConfigError(
                f"source '{s.name}': path {s.path} does not exist; point it at a txt / jsonl / "
                "parquet / csv file or directory (`lmforge data build --out data/default` makes "
                "the default corpus)"
            )
        if s.shards is None:
            continue
        shards = Path(s.shards)
        if not (shards / "meta.json").is_file():
            raise ConfigError(
                f"source '{s.name}': shards {shards} is not a shards directory (no meta.json); "
                "give `path` with the raw data instead"
            )
        if not shards_match(shards, tokenizer):
            theirs = read_json(shards / "meta.json").get("tokenizer_fingerprint")
            raise ConfigError(
                f"source '{s.name}': shards {shards} were built with another tokenizer "
                f"(fingerprint {theirs}) than {cfg.tokenizer} ({tokenizer.fingerprint()}); "
                "give `path` with the raw data so they are rebuilt with this tokenizer"
            )
        if shards.resolve().is_relative_to(out.resolve()):
            raise ConfigError(
                f"source '{s.name}': shards {shards} lie inside the output directory {out}, which "
                "is rebuilt; copy them elsewhere or give `path`"
            )


def _parquet_rows(file: Path, columns: list[str]) -> Iterator[dict]:
    # lmforge.data.sources passes only text/source/id through; a filter may name any column.

    try:
        pf = pq.ParquetFile(file)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{file} is not a readable parquet file: {e}") from None
    names = pf.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(
            f"{file} has no column '{missing[0]}'. Columns present: {', '.join(names)}. "
            "Fix the source's text_column or filter."
        )
    for batch in pf.iter_batches(columns=list(dict.fromkeys(columns)), batch_size=4096):
        cols = batch.to_pydict()
        for i in range(batch.num_rows):
            yield {c: cols[c][i] for c in columns}


def _filtered_texts(spec: SourceSpec, counts: dict) -> Iterator[tuple[int, str]]:
    """(index, text) of the documents under spec.path whose filter columns hold an allowed
    value; the index is the document's position among the corpus's non-empty documents, as
    build_shards counts them, so the subset keeps the whole corpus's train/val split."""

    allowed = {
        col: {str(v) for v in (values if isinstance(values, list) else [values])}
        for col, values in spec.filter.items()
    }
    index = 0
    for file in list_files(spec.path):
        if file.suffix.lower() == ".parquet":
            docs = _parquet_rows(file, [spec.text_column, *allowed])
        else:
            docs = iter_file(file, spec.text_column)
        for doc in docs:
            counts["scanned"] += 1
            for col in allowed:
                if col not in doc:
                    raise DataError(
                        f"source '{spec.name}': {file} has no column '{col}' to filter on "
                        f"(columns: {', '.join(doc)})"
                    )
            values = {col: str(doc[col]) for col in allowed}
            for col, value in values.items():
                seen = counts["values"].setdefault(col, set())
                if len(seen) < 50:
                    seen.add(value)
            text = doc[spec.text_column] if spec.text_column in doc else doc.get("text")
            text = "" if text is None else str(text)
            if all(values[col] in ok for col, ok in allowed.items()):
                counts["kept"] += 1
                yield index, text
            index += bool(text.strip())


def _build_source(
    spec: SourceSpec, cfg: MixtureConfig, tokenizer: Tokenizer, tmp: Path, progress: bool
) -> dict:
    """Tokenize one source into tmp/<name>; returns its manifest entry."""
    if spec.shards is not None:
        meta = read_json(Path(spec.shards) / "meta.json")
        return {"shards": str(Path(spec.shards).resolve()), "splits": _split_counts(meta)}
    entry: dict = {"shards": spec.name}
    data_path, text_column = spec.path, spec.text_column
    if spec.filter is not None:
        # build_shards reads whole files, so the chosen documents go to a temporary jsonl first.
        counts: dict = {"scanned": 0, "kept": 0, "values": {}}
        data_path, text_column = tmp / f".{spec.name}.filtered.jsonl", "text"
        with open(data_path, "w", encoding="utf-8") as f:
            for index, text in _filtered_texts(spec, counts):
                f.write(json.dumps({"text": text, "index": index}, ensure_ascii=False) + "\n")
        if counts["kept"] == 0:
            present = "; ".join(
                f"{c}: {', '.join(sorted(v)[:20])}" for c, v in counts["values"].items()
            )
            raise DataError(
                f"source '{spec.name}': filter {spec.filter} kept none of the "
                f"{counts['scanned']} documents in {spec.path} (values present: {present})"
            )
        entry["filter"] = {"documents_scanned": counts["scanned"], "documents_kept": counts["kept"]}
    meta = build_shards(
        data_path,
        tokenizer,
        tmp / spec.name,
        text_column=text_column,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        progress=progress,
        index_column="index" if spec.filter is not None else None,
    )
    if spec.filter is not None:
        Path(data_path).unlink()
        # Name the real data in the shards' own meta, not the temporary file.
        meta = {**meta, "source": spec.path, "filter": spec.filter}
        write_json(tmp / spec.name / "meta.json", meta)
    entry["splits"] = _split_counts(meta)
    return entry


def _split_counts(meta: dict) -> dict:
    return {
        split: {k: info[k] for k in ("documents", "tokens", "bytes")}
        for split, info in meta["splits"].items()
    }


def build_mixture(cfg: MixtureConfig, out: str | os.PathLike, progress: bool = True) -> dict:
    """Tokenize every source into ``out/<name>/`` and write ``out/mixture.json``; returns it.

    The whole directory is built under a temporary name and moved into place on success, so a
    failed build leaves an earlier mixture at ``out`` untouched.
    """
    out = Path(out)
    t0 = time.perf_counter()
    if not Path(cfg.tokenizer).exists():
        raise ConfigError(
            f"tokenizer {cfg.tokenizer} does not exist; train one with "
            f"`lmforge tokenizer train --data data/default --out {cfg.tokenizer}`"
        )
    tokenizer = Tokenizer.load(cfg.tokenizer)
    _check_inputs(cfg, out, tokenizer)
    with staging_dir(out) as tmp:
        sources = {s.name: _build_source(s, cfg, tokenizer, tmp, progress) for s in cfg.sources}
        manifest = {
            "format": MIXTURE_FORMAT,
            "config": cfg.model_dump(mode="json"),
            "tokenizer": {
                "path": cfg.tokenizer,
                "fingerprint": tokenizer.fingerprint(),
                "vocab_size": tokenizer.vocab_size,
                "bos_id": tokenizer.bos_id,
                "eos_id": tokenizer.eos_id,
            },
            "sources": sources,
            "build_seconds": round(time.perf_counter() - t0, 2),
        }
        write_json(tmp / "mixture.json", manifest)  # last: it marks the directory complete
    return manifest


def read_mixture(mixture_dir: str | os.PathLike) -> dict:
    """The manifest of a built mixture directory, with a clear error when there is none."""
    path = Path(mixture_dir) / "mixture.json"
    if not path.is_file():
        raise DataError(
            f"{mixture_dir} is not a mixture directory (no mixture.json); build it with "
            f"`lmforge data mix --config configs/demo/mixture.yaml --out {mixture_dir}`"
        )
    manifest = read_json(path)
    if manifest.get("format") != MIXTURE_FORMAT:
        raise DataError(f"{path} has format {manifest.get('format')}; rebuild it with this lmforge")
    return manifest


# ---------------------------------------------------------------------------------- weights


def resolve_phases(manifest: dict, run_tokens: int) -> list[tuple[float, dict[str, float]]]:
    """[(from_fraction, {source: share})], the first from 0; shares sum to 1 in each phase.

    ``run_tokens`` is what the whole run reads from the sources (rows x (seq_len + 1)); it
    turns ``epochs`` into shares.
    """
    cfg = MixtureConfig.model_validate(manifest["config"])
    names = [s.name for s in cfg.sources]
    epoch_share = {
        s.name: s.epochs * manifest["sources"][s.name]["splits"]["train"]["tokens"] / run_tokens
        for s in cfg.sources
        if s.epochs is not None
    }
    fixed = sum(epoch_share.values())
    if fixed > 1 + 1e-9:
        wanted = ", ".join(f"{n} {v:.0%}" for n, v in epoch_share.items())
        raise ConfigError(
            f"the sources given in epochs need {fixed:.0%} of the run's {run_tokens:,} tokens "
            f"({wanted}); lower their epochs or lengthen the run (more steps or larger batches)"
        )
    weights = {s.name: s.weight for s in cfg.sources if s.weight is not None}
    total_weight = sum(weights.values())
    if total_weight > 0:
        shares = {**epoch_share, **{n: (1 - fixed) * w / total_weight for n, w in weights.items()}}
    else:
        # Nothing to fill the rest of the run: the epochs become relative.
        shares = {**{n: v / fixed for n, v in epoch_share.items()}, **weights}
    phases = [(0.0, {n: shares[n] for n in names})]
    for phase in cfg.schedule:
        total = sum(phase.weights.values())
        phases.append((phase.from_fraction, {n: phase.weights.get(n, 0.0) / total for n in names}))
    return phases


def _source_seed(seed: int, name: str) -> int:
    # Distinct, stable seeds per source: equal-sized sources must not share one permutation,
    # and reordering the sources in the config must not change what each reads.
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


# ---------------------------------------------------------------------------------- loading


class MixtureLoader:
    """A trainer batch source: {"input_ids": (B, T), "targets": (B, T)}, each row from one source.

    ``total_batches`` is the number of ``next_batch()`` calls in the run (steps x gradient
    accumulation); it places the schedule and turns epochs into shares. ``rank``/``world_size``
    give each data-parallel rank a disjoint share of every source's rows (all ranks draw the
    same sources).
    """

    def __init__(
        self,
        mixture_dir: str | os.PathLike,
        batch_size: int,
        seq_len: int,
        total_batches: int,
        seed: int = 0,
        bos_id: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        if total_batches < 1:
            raise ConfigError(f"total_batches must be at least 1, got {total_batches}")
        self.mixture_dir = Path(mixture_dir)
        self.manifest = read_mixture(mixture_dir)
        self.batch_size, self.seq_len, self.total_batches = batch_size, seq_len, total_batches
        self.seed, self.world_size = seed, world_size
        self.names = list(self.manifest["sources"])
        run_tokens = total_batches * batch_size * world_size * (seq_len + 1)
        self.phases = resolve_phases(self.manifest, run_tokens)
        self.train_tokens = {
            n: self.manifest["sources"][n]["splits"]["train"]["tokens"] for n in self.names
        }
        # One row per call, so each row's source can be chosen on its own.
        self.loaders = {
            name: PackedLoader(
                ShardDataset(self.shards_dir(name), "train"),
                batch_size=1,
                seq_len=seq_len,
                seed=_source_seed(seed, name),
                bos_id=bos_id,
                rank=rank,
                world_size=world_size,
            )
            for name in self.names
        }
        self.batches_drawn = 0
        self.rows_drawn = dict.fromkeys(self.names, 0)

    def shards_dir(self, name: str) -> Path:
        # A prebuilt source is recorded by absolute path, which the join leaves as it is.
        path = self.mixture_dir / self.manifest["sources"][name]["shards"]
        fingerprint = read_json(path / "meta.json").get("tokenizer_fingerprint")
        if fingerprint != self.manifest["tokenizer"]["fingerprint"]:
            raise DataError(
                f"shards {path} of source '{name}' changed tokenizer since the mixture was built; "
                f"rebuild the mixture {self.mixture_dir}"
            )
        return path

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Raise unless the mixture was tokenized with ``tokenizer`` (the model's)."""
        built = self.manifest["tokenizer"]
        if built["fingerprint"] != tokenizer.fingerprint():
            raise ConfigError(
                f"the mixture {self.mixture_dir} was tokenized with {built['path']} (fingerprint "
                f"{built['fingerprint']}), not the model's tokenizer ({tokenizer.fingerprint()}); "
                "rebuild it with `tokenizer:` set to the model's tokenizer"
            )

    def weights_at(self, fraction: float) -> dict[str, float]:
        """The shares in force at this fraction of the run (the last phase past the end)."""
        current = self.phases[0][1]
        for start, shares in self.phases:
            if fraction >= start:
                current = shares
        return current

    def next_batch(self) -> dict[str, torch.Tensor]:
        shares = self.weights_at(self.batches_drawn / self.total_batches)
        p = np.array([shares[n] for n in self.names], dtype=np.float64)
        rng = np.random.default_rng([self.seed, self.batches_drawn])
        picks = rng.choice(len(self.names), size=self.batch_size, p=p / p.sum())
        inputs, targets = [], []
        for k in picks:
            name = self.names[k]
            row = self.loaders[name].next_batch()  # (1, T)
            inputs.append(row["input_ids"])
            targets.append(row["targets"])
            self.rows_drawn[name] += 1
        self.batches_drawn += 1
        return {"input_ids": torch.cat(inputs), "targets": torch.cat(targets)}  # (B, T)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def realised(self) -> dict[str, dict[str, float]]:
        """What this rank has drawn so far, per source: trained-on tokens (seq_len per row, so
        they add up to the trainer's tokens_seen), their share, and passes over the source."""
        total_rows = sum(self.rows_drawn.values())
        out = {}
        for name, rows in self.rows_drawn.items():
            read = rows * self.world_size * (self.seq_len + 1)
            out[name] = {
                "tokens": rows * self.seq_len,
                "share": rows / total_rows if total_rows else 0.0,
                "epochs": read / max(1, self.train_tokens[name]),
            }
        return out

    def realised_flat(self) -> dict[str, float]:
        """``realised()`` as flat scalars for metrics.jsonl / TensorBoard: mix_share/<name>, ..."""
        return {
            f"mix_{key}/{name}": value
            for name, stats in self.realised().items()
            for key, value in stats.items()
        }

    def val_datasets(self) -> dict[str, ShardDataset]:
        """Each source's val split, for per-domain val loss (sources with weight 0 included)."""
        return {name: ShardDataset(self.shards_dir(name), "val") for name in self.names}

    def state_dict(self) -> dict:
        return {
            "batches_drawn": self.batches_drawn,
            "total_batches": self.total_batches,
            "seed": self.seed,
            "rows_drawn": dict(self.rows_drawn),
            "loaders": {name: loader.state_dict() for name, loader in self.loaders.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if sorted(state["loaders"]) != sorted(self.names):
            raise DataError(
                f"the checkpoint's mixture has sources {', '.join(sorted(state['loaders']))} but "
                f"{self.mixture_dir} has {', '.join(sorted(self.names))}; resume with the same "
                "mixture, or start a fresh output directory"
            )
        for key in ("total_batches", "seed"):
            if state[key] != getattr(self, key):
                raise DataError(
                    f"the checkpoint was written with {key} {state[key]}, this loader has "
                    f"{getattr(self, key)}; the schedule and draws would differ. Resume with the "
                    "same settings (max_steps, gradient accumulation, seed) or start fresh"
                )
        for name, loader in self.loaders.items():
            loader.load_state_dict(state["loaders"][name])
        self.batches_drawn = state["batches_drawn"]
        self.rows_drawn = {name: int(state["rows_drawn"][name]) for name in self.names}
