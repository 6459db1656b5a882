"""Curation throughput: the local engine against Ray Data, at 1 and 2 workers, on this machine.

    python benchmarks/curate_scale.py                      # the full default corpus, 1 round
    python benchmarks/curate_scale.py --corpus DIR --rounds 2

Each contender curates the same corpus with the default config in its own process
(`lmforge data curate IN --out OUT [--engine ray] --workers W`, Ray started by the command
with W CPUs), rounds interleaved with the order rotating. Per contender: wall seconds,
documents/s, the peak RSS of the command's process and of each worker process it starts
(sampled every 50 ms with psutil), and whether its kept documents equal the local engine's
(they must). Then what a projection to a cluster needs: the CPU seconds per document of each
step (the report's cpu_seconds_by_step), the bytes each of Ray's shuffles moves per document,
and the LSH S-curve at the configured bands x rows (false positive / negative rates). Writes
benchmarks/results-curate_scale.json; docs/CURATE_AT_SCALE.md projects 1B documents from it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provenance import git_state  # noqa: E402

from lmforge.data.curate import CurateConfig, optimal_bands  # noqa: E402
from lmforge.data.curate.dedup import _false_negative_area, _false_positive_area  # noqa: E402
from lmforge.data.sources import iter_documents  # noqa: E402
from lmforge.machine import cpu_model  # noqa: E402

CONTENDERS = {
    "local-1": ["--workers", "1"],
    "local-2": ["--workers", "2"],
    "ray-1": ["--engine", "ray", "--workers", "1"],
    "ray-2": ["--engine", "ray", "--workers", "2"],
}


def run(name: str, corpus: Path, work: Path) -> dict:
    """One contender, as a user runs it, with the memory of every process it starts."""
    out, report = work / f"out-{name}", work / f"report-{name}"
    cmd = [sys.executable, "-m", "lmforge", "data", "curate", str(corpus), "--out", str(out),
           "--report", str(report), "--no-progress", "--overwrite", *CONTENDERS[name]]  # fmt: skip
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, tuple[str, float, float]] = {}  # pid -> (command line, RSS, USS) in MB
    done = threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    # USS: the pages only this process holds. A Ray worker's RSS also counts
                    # the pages of the shared object store it has mapped.
                    mem, what = p.memory_full_info(), " ".join(p.cmdline())[:300]
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                old = peaks.get(p.pid, ("", 0.0, 0.0))
                peaks[p.pid] = (what, max(old[1], mem.rss / 2**20), max(old[2], mem.uss / 2**20))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{stderr[-3000:]}")
    summary = json.loads((report / "curation.json").read_text())
    driver = peaks.pop(proc.pid, ("", 0.0, 0.0))
    workers = sorted(
        ((rss, uss) for what, rss, uss in peaks.values() if "ray::" in what
         or "default_worker" in what or "multiprocessing" in what),
        key=lambda x: -x[1],
    )  # fmt: skip
    ray_system = sum(uss for what, _, uss in peaks.values() if any(
        k in what for k in ("raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env")))  # fmt: skip
    return {
        "wall_s": round(wall, 2),
        "docs_per_s": round(summary["documents_in"] / wall, 1),
        "documents_in": summary["documents_in"],
        "documents_out": summary["documents_out"],
        "seconds_by_phase": summary["seconds"],
        "cpu_seconds_by_step": summary["cpu_seconds_by_step"],
        "peak_mb": {
            "command_rss": round(driver[1], 1),
            "command_uss": round(driver[2], 1),
            "workers_uss": [round(uss, 1) for _, uss in workers[:4]],
            "workers_rss": [round(rss, 1) for rss, _ in workers[:4]],
            "ray_system_processes_uss": round(ray_system, 1),
            "note": "USS: memory only that process holds; a Ray worker's RSS adds the shared "
            "object store's pages it mapped",
        },
        "near_dedup": summary["near_dedup"],
        "kept": [(d["text"], d["source"]) for d in iter_documents(out)],
    }


def s_curve(threshold: float, bands: int, rows: int) -> dict:
    def p(s):
        return 1 - (1 - s**rows) ** bands

    return {
        "bands": bands,
        "rows": rows,
        "threshold": threshold,
        "P(candidate | Jaccard s)": {
            f"{s:.2f}": round(p(s), 4) for s in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
        },  # fmt: skip
        "false_positive_area": round(_false_positive_area(threshold, bands, rows), 5),
        "false_negative_area": round(_false_negative_area(threshold, bands, rows), 5),
        "note": "P is the chance a pair of Jaccard s shares a band (becomes a candidate); "
        "candidates are then verified on their signatures (estimated Jaccard >= threshold), "
        "which removes false positives up to MinHash's error, sqrt(s(1-s)/num_perm)",
    }


def shuffle_bytes(cfg: CurateConfig, bands: int, rows: int) -> dict:
    """Bytes per row each of the Ray engine's shuffles moves (its Arrow columns, before
    compression), from the row layouts in lmforge/data/curate/ray_engine.py."""
    sig = 4 + 4 * cfg.near_dedup.num_perm  # a signature: binary, with its offset
    part = 8  # the partition column every shuffle adds
    scored = 8 * 9 + 1 + 3 * 4 + 12 + 4 * 8 + sig + part  # numbers, strings, seconds, sig
    return {
        "exact dedup, per document": scored,
        "LSH buckets, per candidate (all bands)": bands * (4 * (rows + 1) + 3 * 8 + part),
        "unique pairs, per candidate pair": 4 * 8,
        "signatures for verification, per candidate (two joins)": 2 * (5 * 8 + sig + 4 + part),
        "pairs through the joins, per candidate pair": 2 * (5 * 8 + 4 + part) + sig,
        "components, per verified pair per round (two stars, both directions)": 2
        * 2
        * (4 * 8 + part),
        "write, per kept document": 5 * 8 + 1 + 12 + part,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", type=Path, help="default: build the full default corpus")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/curate_scale"))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=list(CONTENDERS), choices=list(CONTENDERS))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-curate_scale.json")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = args.corpus
    if corpus is None:
        corpus = args.workdir / "default"
        if not (corpus / "stats.json").exists():
            subprocess.run([sys.executable, "-m", "lmforge", "data", "build", "--out", str(corpus)],
                           check=True, capture_output=True)  # fmt: skip
    t0 = time.time()
    results: dict[str, list] = {name: [] for name in args.only}
    for r in range(args.rounds):
        order = args.only[r % len(args.only) :] + args.only[: r % len(args.only)]
        for name in order:
            res = run(name, corpus, args.workdir)
            print(f"round {r + 1} {name:8s} {res['wall_s']:7.1f} s  {res['docs_per_s']:9.1f} docs/s  "
                  f"peak MB: command RSS {res['peak_mb']['command_rss']:.0f}, workers USS "
                  f"{res['peak_mb']['workers_uss']}", flush=True)  # fmt: skip
            results[name].append(res)
    reference = results.get("local-1", next(iter(results.values())))[0]["kept"]
    table = {}
    for name, runs in results.items():
        best = min(runs, key=lambda x: x["wall_s"])
        table[name] = {k: v for k, v in best.items() if k != "kept"}
        table[name]["wall_s_rounds"] = [x["wall_s"] for x in runs]
        table[name]["kept_equal_to_local"] = all(x["kept"] == reference for x in runs)
    cfg = CurateConfig()
    nd = cfg.near_dedup
    bands, rows = optimal_bands(nd.threshold, nd.num_perm, nd.false_positive_weight,
                                nd.false_negative_weight)  # fmt: skip
    docs = reference and table[args.only[0]]["documents_in"]
    cpu = table.get("local-1", table[args.only[0]])["cpu_seconds_by_step"]
    result = {
        "benchmark": "curate_scale",
        "command": "python " + " ".join(sys.argv),
        "corpus": {"path": str(corpus), "documents": docs},
        "machine": {
            "cpu": cpu_model(),
            "amx": "amx_tile" in open("/proc/cpuinfo").read(),
            "cores": len(os.sched_getaffinity(0)),
            "torch": torch.__version__,
            "isa": torch.backends.cpu.get_cpu_capability(),
            "ray": __import__("ray").__version__,
            **git_state(),
        },
        "contenders": table,
        "cpu_seconds_per_document": {k: v / docs for k, v in cpu.items()},
        "shuffle_bytes": shuffle_bytes(cfg, bands, rows),
        "lsh": s_curve(nd.threshold, bands, rows),
        "runtime_s": round(time.time() - t0, 1),
    }
    base = table.get("local-2", table.get("local-1"))
    if base and "ray-2" in table:
        result["headline"] = (
            f"ray-2 {table['ray-2']['docs_per_s']} docs/s vs local-2 {base['docs_per_s']} = "
            f"{table['ray-2']['docs_per_s'] / base['docs_per_s']:.2f}x; kept documents equal: "
            f"{all(v['kept_equal_to_local'] for v in table.values())}"
        )
        print(result["headline"])
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
