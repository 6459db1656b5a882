"""The report card: which sections a run directory gives, that the HTML stands alone (plots
inlined, nothing fetched, artifact text escaped), that damaged or missing artifacts become
notes instead of tracebacks, and that a browser renders it.

The fixture is a small run directory in the real formats: the tokenizer, the curation report,
the classifier metrics, the paired bootstraps and the trade-off are made by the project's own
writers; training summaries and metrics.jsonl copy the keys the stages write."""

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import CHROMIUM, render_page

from lmforge.data.curate import CurateConfig, curate
from lmforge.eval.classification import split_scores
from lmforge.eval.metrics import classification_report, paired_bootstrap
from lmforge.report import build_report, environment
from lmforge.report import fmt_duration as _dur
from lmforge.report import fmt_num as _num
from lmforge.report import fmt_pct as _pct
from lmforge.stages.tradeoff import tradeoff
from lmforge.utils import append_jsonl, write_json

ALL_SECTIONS = [
    "summary",
    "environment",
    "tokenizer",
    "curation",
    "pretraining",
    "midtraining",
    "posttraining",
    "classification",
    "tradeoff",
    "scaling",
]
TITLES = [
    "Summary",
    "Environment",
    "Tokenizer",
    "Curation",
    "Pre-training",
    "Mid-training",
    "Post-training",
    "Classification",
    "Trade-off",
    "Scaling",
]
EVIL = '<script>alert("x")</script> & <b>bold</b>'


# --- a run directory in the real formats ---------------------------------------------------


def training_log(path: Path, steps: int, start: float, evals: dict, every: int = 10) -> None:
    """metrics.jsonl as the trainer writes it: a row per logged step, one per eval, events."""
    for step in range(every, steps + 1, every):
        append_jsonl(
            path,
            {
                "step": step,
                "loss": start / (1 + step / 50),
                "lr": 1e-3,
                "grad_norm": 0.5,
                "tokens_seen": step * 4096,
                "tokens_per_s": 3000.0,
                "step_ms": 1300.0,
                "elapsed_s": step * 1.3,
                "mfu": 0.6,
            },
        )
        if step == every * 2:
            append_jsonl(path, {"event": "resumed", "step": step, "checkpoint": f"step-{step:06d}"})
        if step % (every * 5) == 0:
            append_jsonl(path, {"step": step, **{k: v * (1 + 10 / step) for k, v in evals.items()}})


def classifier(rng, names, counts, y_val, y_test, skill: float) -> dict:
    """A classifier's metrics as classify writes them: val and test reports, speed and size."""

    def report(y):
        logits = rng.normal(size=(len(y), len(names))) + skill * np.eye(len(names))[y]
        return split_scores(classification_report(y, logits, counts, names))

    val = report(y_val)
    return {
        "val": val,
        "test": report(y_test),
        **val,
        "latency_ms_p50": 10 / skill,
        "latency_ms_p95": 15 / skill,
        "throughput_per_s": 100 * skill,
        "peak_memory_mb": 900.0,
        "checkpoint_mb": 20 * skill,
        "params_trainable": int(1e6 * skill),
    }


def bpb(v: float) -> dict:
    """A midtrain eval: bits per byte and loss on the starting data."""
    return {
        "val_bpb_init": v,
        "val_loss_init": 2.3 * v,
        "val_bpb_data": v,
        "val_loss": 2.3 * v,
        "val_bpb": v,
    }


def predictions(rng, y, skill: float) -> np.ndarray:
    return np.where(rng.random(len(y)) < skill / 5, y, rng.integers(0, 6, len(y)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_corpus, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("report") / "demo"
    shutil.copytree(tiny_tokenizer_dir, root / "tokenizer")
    curate(
        tiny_corpus.parent,
        root.parent / "curated",
        CurateConfig(),
        report=root / "curation",
        progress=False,
        workers=1,
    )

    write_json(
        root / "pretrain" / "summary.json",
        {
            "stage": "pretrain",
            "steps": 200,
            "final_train_loss": 3.9,
            "val_loss": 3.95,
            "val_tokens": 40960,
            "val_bpb": 1.75,
            "tokens_seen": 819200,
            "tokens_per_second": 3100.0,
            "wall_seconds": 260.0,
            "precision": "bf16",
            "mfu": 0.65,
            "params": 16913280,
            "epochs": 0.3,
            "stage_seconds": 280.0,
            "samples": [{"prompt": "The meaning of", "completion": f" life is {EVIL}\n\t-- anon"}],
        },
    )
    training_log(root / "pretrain" / "metrics.jsonl", 200, 8.0, {"val_loss": 3.95, "val_bpb": 1.75})
    write_json(
        root / "encoder" / "summary.json",
        {
            "stage": "pretrain",
            "steps": 100,
            "val_loss": 4.2,
            "val_masked_accuracy": 0.35,
            "tokens_seen": 409600,
            "tokens_per_second": 3500.0,
            "mfu": 0.7,
            "params": 12154112,
            "stage_seconds": 120.0,
            "samples": [
                {
                    "prompt": "a domestic <|mask|> that barks",
                    "guesses": [[" dog", " cat", "s", ",", " is"]],
                }
            ],
        },
    )
    training_log(
        root / "encoder" / "metrics.jsonl", 100, 8.3, {"val_loss": 4.2, "val_masked_accuracy": 0.35}
    )

    write_json(
        root / "midtrain-context" / "summary.json",
        {
            "stage": "midtrain",
            "init": "runs/demo/pretrain",
            "steps": 150,
            "val_bpb": 1.69,
            "tokens_seen": 614400,
            "tokens_per_second": 2400.0,
            "stage_seconds": 300.0,
            "before": bpb(1.6887),
            "after": bpb(1.6895),
            "forgetting_bpb": 0.0008,
            "context": {
                "from": 64,
                "to": 256,
                "phases": [[0.0, 128], [0.5, 256]],
                "rope_scaling": "none",
                "rope_theta": 40000.0,
                "rope_scaling_factor": 1.0,
            },
            "loss_by_position": {
                "documents": 4,
                "before": {"0-63": 4.0},
                "after": {"0-63": 3.9},
                "beyond_old_context": {"before": 4.45, "after": 4.2},
            },
        },
    )
    training_log(root / "midtrain-context" / "metrics.jsonl", 150, 4.0, bpb(1.69))
    curve = np.linspace(4.5, 3.8, 256)
    np.save(root / "midtrain-context" / "loss_by_position.npy", np.stack([curve + 0.3, curve]))

    question = {"task": "define", "user": f"What does {EVIL} mean?", "reference": "A tag."}
    write_json(
        root / "sft" / "answers.json",
        {
            "before": {
                "n": 1,
                "exact_match": 0.0,
                "token_f1": 0.06,
                "by_task": {"define": {"n": 1, "token_f1": 0.06}},
                "transcripts": [{**question, "answer": "And the world", "token_f1": 0.06}],
            },
            "after": {
                "n": 1,
                "exact_match": 0.0,
                "token_f1": 0.47,
                "by_task": {"define": {"n": 1, "token_f1": 0.47}},
                "transcripts": [{**question, "answer": f"It is {EVIL}.", "token_f1": 0.47}],
            },
        },
    )
    write_json(
        root / "sft" / "summary.json",
        {
            "stage": "sft",
            "init": "runs/demo/pretrain",
            "method": "full",
            "steps": 100,
            "final_train_loss": 1.7,
            "val_loss": 1.97,
            "stage_seconds": 500.0,
        },
    )
    training_log(root / "sft" / "metrics.jsonl", 100, 3.0, {"val_loss": 1.97})
    write_json(
        root / "reward" / "summary.json",
        {
            "stage": "reward",
            "init": "runs/demo/sft",
            "val_loss": 0.65,
            "val_accuracy": 0.64,
            "val_margin": 0.55,
            "train_pairs": 1000,
            "val_pairs": 300,
            "stage_seconds": 390.0,
            "before": {"val_loss": 0.71, "val_accuracy": 0.43, "val_margin": -0.03},
        },
    )
    training_log(
        root / "reward" / "metrics.jsonl", 100, 0.7, {"val_loss": 0.65, "val_accuracy": 0.64}
    )
    write_json(
        root / "dpo" / "summary.json",
        {
            "stage": "dpo",
            "init": "runs/demo/sft",
            "beta": 0.1,
            "val_loss": 0.6,
            "val_reward_accuracy": 0.69,
            "val_margin": 0.33,
            "val_policy_prefers_chosen": 0.64,
            "val_reference_prefers_chosen": 0.63,
            "win_rate_over_init": 0.515,
            "stage_seconds": 700.0,
            "before": {"val_loss": 0.693, "val_reward_accuracy": 0.0},
        },
    )
    training_log(
        root / "dpo" / "metrics.jsonl", 100, 0.7, {"val_loss": 0.6, "val_reward_accuracy": 0.69}
    )
    write_json(
        root / "dpo" / "win_rate.json",
        {
            "win_rate": 0.515,
            "n": 2,
            "transcripts": [
                {
                    "user": "Define hated.",
                    "policy": f"Having {EVIL}",
                    "baseline": "A sound.",
                    "policy_reward": 1.2,
                    "baseline_reward": -0.8,
                },
                {
                    "user": "Use 'con'.",
                    "policy": "The con.",
                    "baseline": "A child.",
                    "policy_reward": 0.4,
                    "baseline_reward": 0.9,
                },
            ],
        },
    )

    rng = np.random.default_rng(0)
    names, counts = [f"label{i}" for i in range(6)], [500, 300, 100, 40, 10, 3]
    y_val, y_test = rng.integers(0, 6, 300), rng.integers(0, 6, 300)
    for name, stage, method, skill in (
        ("tfidf", "baseline-tfidf", "tfidf-logreg", 1.0),
        ("cls-encoder", "classify", "full", 3.0),
        ("cls-encoder-int8", "quantize", "int8", 2.9),
    ):
        extra = (
            {"source": "elsewhere/cls-encoder"}
            if stage == "quantize"
            else {"init": "runs/demo/encoder"}
        )
        write_json(
            root / name / "summary.json",
            {
                "stage": stage,
                "method": method,
                **extra,
                **classifier(rng, names, counts, y_val, y_test, skill),
                "stage_seconds": 60 * skill,
            },
        )
    tiers = {"head": [0, 1], "mid": [2, 3], "tail": [4, 5]}
    diff = paired_bootstrap(
        y_test, predictions(rng, y_test, 3), predictions(rng, y_test, 1), 6, tiers, n_resamples=50
    )
    write_json(
        root / "compare-encoder-vs-tfidf.json",
        {
            "a": str(root / "cls-encoder"),
            "b": str(root / "tfidf"),
            "split": "test",
            "examples": 300,
            "n_resamples": 50,
            "macro_f1_difference_a_minus_b": diff,
        },
    )
    tradeoff(root, max_latency_ms=5.0, min_macro_f1=0.1)

    write_json(
        root / "scaling-fit" / "fit.json",
        {
            "runs": [
                {
                    "run": f"runs/demo/scaling/D1e+06-d{d}",
                    "params": 1e6 * d,
                    "tokens": 1e6,
                    "val_loss": 5 - d / 4,
                }
                for d in (2, 3, 4)
            ],
            "approach3": {
                "n_runs": 3,
                "alpha_interval": [0.7, 0.85],
                "beta_interval": [0.19, 0.21],
                "a_interval": [0.15, 0.22],
                "a": 0.21,
                "E": 1.68,
                "A": 18313.8,
                "B": 56.0,
                "alpha": 0.79,
                "beta": 0.21,
            },
            "predicted_optimum": {
                "flops": 3e14,
                "n_opt": 902441.8,
                "d_opt": 55405235.2,
                "tokens_per_param": 61.4,
                "loss": 3.36,
            },
            "chinchilla_a": 0.4516,
            "notes": ["approach 2 not fitted: approach 2 needs >= 2 FLOP budgets"],
        },
    )
    shutil.copy(root / "tradeoff.png", root / "scaling-fit" / "law.png")  # any real PNG will do
    return root


@pytest.fixture(scope="module")
def built(runs):
    return build_report(runs), runs


# --- what the report holds ------------------------------------------------------------------


def test_full_run_directory_gives_every_section_and_no_notes(built):
    result, root = built
    assert result["sections"] == ALL_SECTIONS
    assert result["notes"] == []
    assert result["html"] == str(root / "report.html") and result["md"] == str(root / "report.md")
    figures = [Path(f) for f in result["figures"]]
    assert {f.name for f in figures} >= {
        "pretraining-curves.png",
        "tradeoff-pareto.png",
        "midtraining-loss-by-position.png",
        "classification-tiers.png",
    }
    assert all(
        f.parent == root / "report_figures" and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for f in figures
    )
    md = (root / "report.md").read_text()
    for f in figures:  # the Markdown points at every figure, relative to itself
        assert f"](report_figures/{f.name})" in md
    html = (root / "report.html").read_text()
    for title in TITLES:
        assert f">{title}</h2>" in html
    assert "Not in this run" not in html


def test_headline_numbers_reach_the_summary(built):
    _, root = built
    md = (root / "report.md").read_text()
    assert "| pretrain | pretrain | 4 min 40 s | val bpb 1.75 |" in md
    assert "masked-token accuracy 35.0%" in md
    assert "| reward | reward | 6 min 30 s | val accuracy 43.0% → 64.0% |" in md
    assert "reward accuracy 69.0%, win rate 51.5%" in md
    assert "**recommended deployment**" in md
    assert "Events in these runs: pretrain: resumed at step 20" in md


def test_html_is_self_contained(built):
    result, root = built
    html = (root / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.I)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(images) == len(result["figures"]) and images
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', html))  # the contents only


def test_artifact_text_is_escaped_in_html_and_markdown(built):
    _, root = built
    html, md = (root / "report.html").read_text(), (root / "report.md").read_text()
    for text in (html, md):
        assert "<script>" not in text and "<b>bold</b>" not in text
        assert "&lt;script&gt;alert(" in text
    assert "&lt;|mask|&gt;" in html and "&lt;|endoftext|&gt;" in html  # special tokens stay visible
    assert 'class="msg user"' in html and "What does &lt;script&gt;" in html


def test_missing_stages_omit_their_sections_and_name_the_command(tmp_path, tiny_tokenizer_dir):
    shutil.copytree(tiny_tokenizer_dir, tmp_path / "tokenizer")
    result = build_report(tmp_path)
    assert result["sections"] == ["summary", "environment", "tokenizer"]
    md = Path(result["md"]).read_text()
    assert (
        "## Not in this run" in md
        and "`lmforge pretrain --config configs/demo/pretrain.yaml`" in md
    )
    assert "## Pre-training" not in md and "## Trade-off" not in md


def test_damaged_artifacts_become_notes_not_tracebacks(runs, tmp_path):
    root = tmp_path / "demo"
    shutil.copytree(runs, root)
    (root / "pretrain" / "summary.json").write_text('{"stage": "pretrain", "val_b')  # a torn write
    with open(root / "sft" / "metrics.jsonl", "a") as f:
        f.write('{"step": 110, "lo')
    (root / "curation" / "curation.json").write_text(
        json.dumps({"steps": "not a list", "sources": 3})
    )
    write_json(root / "reward" / "summary.json", ["not", "an", "object"])
    result = build_report(root)
    notes = " ".join(result["notes"])
    assert "pretrain/summary.json` could not be read (JSONDecodeError" in notes
    assert "sft/metrics.jsonl`: damaged lines were skipped" in notes
    assert "The curation section could not be made from the artifacts" in notes
    assert "reward/summary.json` holds a list" in notes
    assert "curation" not in result["sections"] and "classification" in result["sections"]
    html = Path(result["html"]).read_text()
    assert html.count('class="note"') >= 4 and "pretrain/summary.json" in html
    assert "could not be read (see the notes above)" in html  # its row in the summary table


def test_pipeline_json_gives_order_verbs_wall_times_and_environment(runs, tmp_path):
    root = tmp_path / "demo"
    shutil.copytree(runs, root)
    env = {"cpu_model": "Test CPU 9000", "logical_cores": 2, "git_commit": "abc1234"}
    stages = {  # outs as `lmforge run` writes them: relative to the project, under vars.runs
        "tokenizer": {
            "verb": "tokenizer train",
            "out": "runs/demo/tokenizer",
            "seconds": 13.6,
            "cached": True,
        },
        "curation": {
            "verb": "data curate",
            "argv": [
                "data",
                "curate",
                "data/default",
                "--out",
                "data/curated",
                "--report",
                "runs/demo/curation",
            ],
            "out": "data/curated",
            "seconds": 28.0,
        },
        "pretrain": {"verb": "pretrain", "out": "runs/demo/pretrain", "seconds": 1724.0},
        "sft": {"verb": "sft", "out": "runs/demo/sft", "status": "failed", "seconds": 12.0},
        "task": {
            "verb": "data wordnet-task",
            "out": "data/nowhere",
            "status": "failed",
            "seconds": 2.0,
            "error": "finished but did not write data/nowhere",
        },
        "tradeoff": {"verb": "tradeoff", "out": "runs/demo", "seconds": 3.0},
    }
    for st in stages.values():
        st.setdefault("status", "done")
    write_json(
        root / "pipeline.json",
        {
            "name": "demo",
            "file": "configs/pipeline/demo.yaml",
            "profile": None,
            "vars": {"runs": "runs/demo"},
            "environment": env,
            "started": "2026-11-26T01:00:00Z",
            "finished": "2026-11-26T01:30:00Z",
            "stages": stages,
        },
    )
    result = build_report(root)
    md = Path(result["md"]).read_text()
    table = md[md.index("## Summary") : md.index("## Environment")].splitlines()
    assert [line.split(" | ")[0].lstrip("| ") for line in table if line.startswith("| ")][
        1:
    ] == list(stages)
    assert "| tokenizer | tokenizer train | done (cached) | 13.6 s |" in md
    assert "| sft | sft | failed | 12.0 s |" in md
    assert "| pretrain | pretrain | done | 28 min 44 s | val bpb 1.75 |" in md
    assert "Recorded by `lmforge run`" in md and "Test CPU 9000" in md and "abc1234" in md
    assert "Report card: demo" in md and "started 2026-11-26T01:00:00Z" in md
    assert (
        "| task | data wordnet-task | failed | 2.0 s | finished but did not write data/nowhere |"
        in md
    )
    assert result["notes"] == []  # earlier runs in the directory are named, not reported
    assert re.search(
        r"not stages of this pipeline and left out of this report: cls-encoder, .*encoder", md
    )
    assert "midtraining" not in result["sections"] and "curation" in result["sections"]


def test_a_rerun_drops_the_figures_of_sections_that_are_gone(runs, tmp_path):
    root = tmp_path / "demo"
    for stage in ("tokenizer", "midtrain-context"):
        shutil.copytree(runs / stage, root / stage)
    first = build_report(
        root, out_html=tmp_path / "elsewhere" / "card.html", out_md=tmp_path / "card.md"
    )
    assert Path(first["html"]).is_file() and not (root / "report.html").exists()
    assert (root / "report_figures" / "midtraining-curves.png").is_file()
    assert "](demo/report_figures/midtraining-curves.png)" in Path(first["md"]).read_text()
    shutil.rmtree(root / "midtrain-context")
    second = build_report(root)
    assert "midtraining" not in second["sections"]
    assert not (root / "report_figures" / "midtraining-curves.png").exists()
    assert sorted(p.name for p in (root / "report_figures").iterdir()) == sorted(
        Path(f).name for f in second["figures"]
    )


def test_environment_names_the_machine_and_the_versions():
    env = environment()
    assert env["logical_cores"] >= 1 and env["python"].count(".") == 2 and env["torch"]
    assert env["lmforge"] and env["cpu_model"] and env["ram_gb"] > 0 and env["torch_threads"] >= 1
    assert env["git_commit"] is None or re.fullmatch(r"[0-9a-f]{4,40}", env["git_commit"])
    json.dumps(env)  # pipeline.json stores it as it is


def test_numbers_keep_three_significant_digits():
    assert [_num(1.72137), _num(0.40991), _num(8192), _num(4505600), _num(1.79e15), _num(None)] == [
        "1.72",
        "0.410",
        "8,192",
        "4.51e6",
        "1.79e15",
        "–",
    ]
    assert [_pct(0.9962), _pct(0.0005), _pct(0.0)] == ["99.6%", "0.05%", "0.0%"]
    assert [_dur(13.57), _dur(1724.1), _dur(12000)] == ["13.6 s", "28 min 44 s", "3 h 20 min"]


# --- in a real browser ----------------------------------------------------------------------


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs Chromium at {CHROMIUM}")
def test_report_renders_in_chromium(built, tmp_path):
    from PIL import Image

    _, root = built
    seen = render_page(root / "report.html", tmp_path / "report.png")
    errors, loaded, requests = seen["errors"], seen["images_loaded"], seen["requests"]
    height, text = seen["height"], seen["text"]
    assert not errors and loaded
    assert all(u.startswith(("file:", "data:")) for u in requests)  # nothing from the network
    assert height > 4000
    for title in TITLES:
        assert title in text
    shot = Image.open(tmp_path / "report.png").convert("RGB")
    assert (
        shot.height > 4000 and len(shot.getcolors(maxcolors=1 << 20)) > 1000
    )  # plots, not a blank page
