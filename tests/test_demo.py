"""`lmforge demo --quick` end to end: every stage of configs/pipeline/demo.yaml at tiny sizes,
the report card rendered in Chromium, a second run all cached, one changed classification
option re-running only its branch. About 2-3 minutes on 2 cores: the run CI makes of the demo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CHROMIUM, render_page

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = [
    "Summary",
    "Environment",
    "Tokenizer",
    "Curation",
    "Pre-training",
    "Mid-training",
    "Post-training",
    "Classification",
    "Trade-off",
]


def lmforge(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    # From the repository root: the pipeline names its recipes as configs/demo/*.yaml.
    r = subprocess.run(
        [sys.executable, "-m", "lmforge", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, (
        f"lmforge {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    )
    return r


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    where = ["--var", f"runs={tmp / 'runs'}", "--var", f"data={tmp / 'data'}"]
    out = lmforge("demo", "--quick", *where)
    return tmp / "runs", where, out.stdout


def state(runs: Path) -> dict:
    return json.loads((runs / "pipeline.json").read_text())


def test_every_stage_runs_and_reports_a_headline(demo):
    runs, _, stdout = demo
    s = state(runs)
    assert s["profile"] == "quick" and s["environment"]["torch"]
    stages = s["stages"]
    assert all(r["status"] == "done" and not r["cached"] for r in stages.values())
    for name in (
        "pretrain",
        "encoder",
        "midtrain-context",
        "sft",
        "reward",
        "dpo",
        "cls-minilm",
        "cls-minilm-int8",
        "cls-decoder-lora",
        "cls-decoder-int4",
        "cls-encoder-distilled",
        "tradeoff",
    ):
        assert name in stages and Path(stages[name]["out"]).exists()
    table = stdout[stdout.index("headline") :]
    assert "val bpb" in table and "macro F1" in table and "recommended:" in table
    assert "Report card:" in stdout


def test_report_card_has_every_stage_and_renders_in_chromium(demo, tmp_path):
    runs, _, _ = demo
    md = (runs / "report.md").read_text()
    html = (runs / "report.html").read_text()
    for title in SECTIONS:
        assert f"## {title}" in md
    assert "Not in this run" in md and "- scaling: `lmforge scaling sweep" in md  # optional: named
    assert 'src="http' not in html and "data:image/png;base64," in html
    for stage in state(runs)["stages"]:
        assert stage in md  # the per-stage wall-time table
    if not Path(CHROMIUM).exists():
        pytest.skip(f"rendering needs Chromium at {CHROMIUM}")
    seen = render_page(runs / "report.html", tmp_path / "report.png")
    assert not seen["errors"] and seen["images_loaded"] and seen["images"] >= 6
    assert all(u.startswith(("file:", "data:")) for u in seen["requests"])
    for title in SECTIONS:
        assert title in seen["text"]
    assert seen["height"] > 3000


def test_second_run_is_all_cached(demo):
    runs, where, _ = demo
    out = lmforge("run", "configs/pipeline/demo.yaml", "--profile", "quick", *where)
    assert "ran 0 stage(s): none (all cached)" in out.stdout
    assert all(r["cached"] for r in state(runs)["stages"].values())


def test_one_changed_classification_option_reruns_only_its_branch(demo, tmp_path):
    runs, where, _ = demo
    before = state(runs)["stages"]
    text = (ROOT / "configs/pipeline/demo.yaml").read_text()
    old = "out_dir=${runs}/cls-decoder-probe"
    assert old in text
    changed = tmp_path / "demo.yaml"
    changed.write_text(text.replace(old, old + " label_smoothing=0.1"))
    plan = lmforge("run", str(changed), "--profile", "quick", *where, "--dry-run").stdout
    runs_planned = [f[0] for f in map(str.split, plan.splitlines()) if "run" in f[1:4]]
    assert runs_planned == ["cls-decoder-probe", "tradeoff"], plan
    out = lmforge("run", str(changed), "--profile", "quick", *where)
    assert "ran 2 stage(s): cls-decoder-probe, tradeoff" in out.stdout
    after = state(runs)["stages"]
    assert after["cls-decoder-probe"]["key"] != before["cls-decoder-probe"]["key"]
    assert after["cls-decoder-lora"]["key"] == before["cls-decoder-lora"]["key"]
    cfg = (runs / "cls-decoder-probe" / "config.yaml").read_text()
    assert "label_smoothing: 0.1" in cfg


def test_an_interrupted_stage_resumes_mid_way_through_its_checkpoints(demo):
    import signal
    import time

    runs, where, _ = demo
    ckpts = runs / "pretrain" / "checkpoints"
    cmd = [
        sys.executable,
        "-m",
        "lmforge",
        "run",
        "configs/pipeline/demo.yaml",
        "--profile",
        "quick",
        *where,
        "--only",
        "pretrain",
        "--force",
    ]
    # Its own process group, so that Ctrl-C reaches the pipeline and its stage, as in a terminal.
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not any(ckpts.glob("step-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C after the first checkpoint (step 20 of 40)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "interrupted" in out and "resumes from its last checkpoint" in out
    assert state(runs)["stages"]["pretrain"]["status"] == "running"
    assert any(ckpts.glob("step-*"))

    again = lmforge("run", "configs/pipeline/demo.yaml", "--profile", "quick", *where)
    assert "[pretrain] running (resuming)" in again.stdout
    events = [
        json.loads(line) for line in (runs / "pretrain" / "metrics.jsonl").read_text().splitlines()
    ]
    resumed = [e for e in events if e.get("event") == "resumed"]
    assert resumed and resumed[0]["step"] >= 20  # continued, not restarted
    assert state(runs)["stages"]["pretrain"]["status"] == "done"
    # Same recipe, same key: what it feeds is still cached.
    for below in ("sft", "midtrain-context", "cls-decoder-lora", "lm-int8"):
        assert f"[{below}] cached" in again.stdout
