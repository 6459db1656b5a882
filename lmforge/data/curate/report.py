"""The curation report: ``curation.json`` (documents and characters through every step,
overall and per source), ``curation.md``, ``removed_examples.json`` and
``near_dup_clusters.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmforge.data.curate.quality import RULES
from lmforge.utils import atomic_write_text, staging_dir, write_json

# What became of a document: kept, or the step that removed it (STEPS, in pipeline order).
KEPT, TOO_LONG, EXACT, QUALITY, NEAR = 0, 1, 2, 3, 4
STEPS = ("too_long", "exact_dedup", "quality", "near_dedup")


def truncate(text: str, n: int) -> str:
    """An example's text as the report shows it: at most n characters, and how many more."""
    return text if len(text) <= n else text[:n] + f"... [{len(text) - n} more chars]"


def summarize(
    *,
    inputs,
    out,
    cfg,
    status,
    source_of,
    source_ids,
    chars_in,
    chars_norm,
    first_failure,
    failing,
    near,
    truncated,
    normalized_changed,
    skipped_files,
    seconds,
    cpu_seconds,
    workers,
    kept_stats,
    documents=None,
) -> dict:
    """curation.json: documents and characters through every step, overall and per source.

    One row per document, or (the Ray engine) one row per group of documents alike in source,
    status and rules failed: ``documents`` then counts each row's documents, and the character
    arrays hold the group's sums. Characters are counted after normalisation, except that a
    document skipped for its length counts at its full length."""
    docs = np.ones(len(status), dtype=np.int64) if documents is None else np.asarray(documents)
    chars = np.where(status == TOO_LONG, chars_in, chars_norm)
    codes = dict(zip(STEPS, (TOO_LONG, EXACT, QUALITY, NEAR)))
    enabled_rules = [
        (f, name) for f, name in enumerate(RULES) if getattr(cfg.quality, name).enabled
    ]

    def step_rows(mask: np.ndarray) -> list[dict]:
        rows, alive = [], mask.copy()
        for step in STEPS:
            gone = alive & (status == codes[step])
            row = {
                "step": step,
                "documents_in": int(docs[alive].sum()),
                "documents_removed": int(docs[gone].sum()),
                "documents_out": int(docs[alive].sum() - docs[gone].sum()),
                "characters_in": int(chars[alive].sum()),
                "characters_removed": int(chars[gone].sum()),
                "characters_out": int(chars[alive].sum() - chars[gone].sum()),
            }
            if step == "quality":
                # removed: the first rule a document fails; failing: every rule it fails.
                row["filters"] = {
                    name: {
                        "documents_removed": int(docs[gone & (first_failure == f)].sum()),
                        "characters_removed": int(chars[gone & (first_failure == f)].sum()),
                        "documents_failing": int(docs[alive & failing[:, f]].sum()),
                    }
                    for f, name in enabled_rules
                }
            rows.append(row)
            alive &= ~gone
        return rows

    steps = step_rows(np.ones(len(status), dtype=bool))
    per_source = {}
    for sid, name in enumerate(source_ids):
        rows = step_rows(source_of == sid)
        per_source[name] = {
            "documents_in": rows[0]["documents_in"],
            "characters_in": rows[0]["characters_in"],
            "removed": {r["step"]: r["documents_removed"] for r in rows},
            "characters_removed": {r["step"]: r["characters_removed"] for r in rows},
            "removed_by_filter": {
                f: v["documents_removed"] for f, v in rows[2].get("filters", {}).items()
            },
            "documents_out": rows[-1]["documents_out"],
            "characters_out": rows[-1]["characters_out"],
        }
    sizes = near["cluster_sizes"]
    return {
        "input": str(inputs),
        "output": str(out),
        "documents_in": steps[0]["documents_in"],
        "characters_in": steps[0]["characters_in"],
        "documents_out": steps[-1]["documents_out"],
        "characters_out": steps[-1]["characters_out"],
        "files_skipped": skipped_files,
        "normalize": {
            "documents_changed": int(normalized_changed),
            "documents_truncated": int(truncated),
            "characters_read": int(chars_in.sum()),
            "characters_after": int(chars_norm.sum()),
        },
        "steps": steps,
        "near_dedup": {
            **{k: v for k, v in near.items() if k != "cluster_sizes"},
            "threshold": cfg.near_dedup.threshold,
            "clusters": int(sum(sizes.values())),
            "documents_in_clusters": int(sum(s * c for s, c in sizes.items())),
            "cluster_sizes": sizes,
        },
        "sources": per_source,
        "output_stats": kept_stats,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "cpu_seconds_by_step": {k: round(v, 2) for k, v in cpu_seconds.items()},
        "workers": workers,
        "config": cfg.model_dump(mode="json"),
    }


def write_report(report: Path, summary: dict, examples: dict) -> None:
    with staging_dir(report) as tmp:
        write_json(tmp / "curation.json", summary)
        write_json(tmp / "removed_examples.json", dict(examples))
        atomic_write_text(tmp / "curation.md", _markdown(summary))
        _plot_clusters(summary["near_dedup"]["cluster_sizes"], tmp / "near_dup_clusters.png")


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "-"


def _markdown(s: dict) -> str:
    lines = [
        f"# Curation of {s['input']}",
        "",
        f"{s['documents_in']:,} documents ({s['normalize']['characters_read']:,} characters) in, "
        f"{s['documents_out']:,} ({s['characters_out']:,} characters) out "
        f"({_pct(s['documents_out'], s['documents_in'])} of documents kept) "
        f"in {s['seconds']['total']:.1f} s with {s['workers']} worker(s).",
        "",
        "## Steps",
        "",
        "Each document is removed by the first step that rejects it; characters are counted "
        "after normalisation.",
        "",
        "| step | documents in | removed | out | characters removed |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in s["steps"]:
        lines.append(
            f"| {r['step']} | {r['documents_in']:,} | {r['documents_removed']:,} "
            f"({_pct(r['documents_removed'], r['documents_in'])}) | {r['documents_out']:,} | "
            f"{r['characters_removed']:,} |"
        )
    norm = s["normalize"]
    lines += [
        "",
        f"Normalisation changed {norm['documents_changed']:,} documents "
        f"({norm['characters_read']:,} characters read, {norm['characters_after']:,} after); "
        f"{norm['documents_truncated']:,} were truncated to the length limit.",
    ]
    if s["files_skipped"]:
        lines += ["", "Unreadable files skipped:", ""]
        lines += [f"- {f['file']}: {f['error']}" for f in s["files_skipped"]]
    sources = list(s["sources"])
    quality = next(r for r in s["steps"] if r["step"] == "quality")
    lines += [
        "",
        "## Per source",
        "",
        "| source | in | too long | exact dups | quality | near dups | out | kept |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in sources:
        p = s["sources"][name]
        rm = p["removed"]
        lines.append(
            f"| {name} | {p['documents_in']:,} | {rm['too_long']:,} | {rm['exact_dedup']:,} | "
            f"{rm['quality']:,} | {rm['near_dedup']:,} | {p['documents_out']:,} | "
            f"{_pct(p['documents_out'], p['documents_in'])} |"
        )
    lines += [
        "",
        "## Quality filters",
        "",
        "Documents removed by each rule (the first rule a document fails), per source; "
        "'failing' counts every document the rule rejects, overlaps included.",
        "",
        "| rule | removed | failing | " + " | ".join(sources) + " |",
        "|---|---:|---:|" + "---:|" * len(sources),
    ]
    for name, f in quality.get("filters", {}).items():
        per = " | ".join(f"{s['sources'][x]['removed_by_filter'].get(name, 0):,}" for x in sources)
        lines.append(
            f"| {name} | {f['documents_removed']:,} | {f['documents_failing']:,} | {per} |"
        )
    nd = s["near_dedup"]
    lines += [
        "",
        "## Near duplicates",
        "",
        f"MinHash {s['config']['near_dedup']['num_perm']} permutations, word "
        f"{s['config']['near_dedup']['ngram']}-gram shingles, Jaccard threshold {nd['threshold']}: "
        f"{nd['bands']} bands x {nd['rows']} rows; {nd['candidates']:,} candidates, "
        f"{nd['candidate_pairs']:,} candidate pairs"
        + (f", {nd['verified_pairs']:,} verified" if nd.get("verified_pairs") is not None else "")
        + f"; {nd['clusters']:,} clusters holding {nd['documents_in_clusters']:,} documents.",
        "",
        "| cluster size | clusters |",
        "|---:|---:|",
    ]
    lines += [f"| {size} | {count:,} |" for size, count in nd["cluster_sizes"].items()]
    lines += [
        "",
        "## Time",
        "",
        "| phase | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v} |" for k, v in s["seconds"].items()]
    lines += ["", "CPU seconds inside the scoring pass, summed over workers:", ""]
    lines += [f"- {k}: {v}" for k, v in s["cpu_seconds_by_step"].items()]
    return "\n".join(lines) + "\n"


def _plot_clusters(cluster_sizes: dict, path: Path) -> None:
    # Imported here: only a report needs it, and it costs ~0.3 s on every CLI start.
    import matplotlib  # a second to import: only a run that draws pays for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if cluster_sizes:
        sizes, counts = [int(k) for k in cluster_sizes], list(cluster_sizes.values())
        bars = ax.bar(sizes, counts, width=0.8, color="#4477aa")
        ax.bar_label(bars, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.5)  # a cluster size seen once still shows a bar
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("documents in the cluster")
        ax.set_ylabel("clusters")
    else:
        ax.text(0.5, 0.5, "no near-duplicate clusters", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("Near-duplicate cluster sizes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
