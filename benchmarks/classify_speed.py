"""Classifier speed side by side, one protocol (lmforge/eval/bench.py), one fresh process per
run so peak memory is each model's own, measured back to back on a quiet machine.

Training runs measure speed at their end too, but a run that trained while something else
used the cores reports slower numbers; this re-measures every run in the same conditions and
prints ratios against the first (the TF-IDF bar).

    python benchmarks/classify_speed.py runs/demo/tfidf-20k runs/demo/cls-encoder-full \\
        runs/demo/cls-decoder-lora runs/demo/cls-decoder-probe --task data/wordnet-task
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ONE = """
import json, sys
import torch
from lmforge.data.tasks import load_task
from lmforge.eval.bench import measure_speed
run, task = sys.argv[1], sys.argv[2]
texts = [t for t, _ in load_task(task).val[:200]]
summary = json.load(open(f"{run}/summary.json"))
if summary.get("stage") == "baseline-tfidf":
    from lmforge.stages.baseline import TfidfModel
    model = TfidfModel.load(run)
    result = measure_speed(model.transform, model.logits, texts)
else:
    from lmforge.artifact import load
    from lmforge.eval.classifier import read_settings, speed
    loaded = load(run)
    result = speed(loaded.model, loaded.tokenizer, texts, read_settings(run))
print(json.dumps(result))
"""


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--task", default="data/wordnet-task")
    ap.add_argument("--repeats", type=int, default=3, help="round-robin repeats; medians reported")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results-classify_speed.json")))
    args = ap.parse_args()
    # Round robin over the runs, `repeats` times, then the median of each number: a shared VM's
    # speed drifts, and interleaving spreads the drift over every run alike.
    samples: dict[str, list[dict]] = {run: [] for run in args.runs}
    for _ in range(args.repeats):
        for run in args.runs:
            out = subprocess.run(
                [sys.executable, "-c", ONE, run, args.task],
                check=True,
                capture_output=True,
                text=True,
            )
            samples[run].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = {
        run: {k: statistics.median(s[k] for s in ss) for k in ss[0]} for run, ss in samples.items()
    }
    first = rows[args.runs[0]]
    print(f"medians of {args.repeats} interleaved measurements per run")
    print(
        "| run | latency p50 ms | p95 ms | tokenize p50 ms | throughput /s (batch 32) | peak RSS MB | latency vs first |"
    )
    print("|---|---|---|---|---|---|---|")
    for run, r in rows.items():
        ratio = r["latency_ms_p50"] / first["latency_ms_p50"]
        print(
            f"| {Path(run).name} | {r['latency_ms_p50']:.2f} | {r['latency_ms_p95']:.2f} | "
            f"{r['tokenize_ms_p50']:.3f} | {r['throughput_per_s']:,.0f} | "
            f"{r['peak_memory_mb']:,.0f} | {ratio:.1f}x |"
        )
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
