"""The pipeline runner: what runs, what is cached, what resumes (lmforge/pipeline.py).

The rules are checked with a runner that only writes each stage's output, so every case is
fast; tests/test_demo.py runs the real quick demo through them end to end.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from lmforge import pipeline
from lmforge.errors import ConfigError

PIPELINE = """
name: toy
vars: {runs: RUNS, data: DATA}
stages:
  corpus:
    run: data build --out ${data}/corpus
    out: ${data}/corpus
  tokenizer:
    run: tokenizer train --data ${data}/corpus --out ${runs}/tokenizer
    out: ${runs}/tokenizer
  pretrain:
    run: pretrain --config CONFIG out_dir=${runs}/pretrain tokenizer=${runs}/tokenizer
    out: ${runs}/pretrain
  task:
    run: data wordnet-task --out ${data}/task
    out: ${data}/task
  cls-a:
    run: classify train --config CONFIG out_dir=${runs}/cls-a init=${runs}/pretrain task.path=${data}/task
    out: ${runs}/cls-a
  cls-b:
    run: classify train --config CONFIG out_dir=${runs}/cls-b init=${runs}/pretrain task.path=${data}/task
    out: ${runs}/cls-b
  int8:
    run: quantize ${runs}/cls-a --method int8 --out ${runs}/int8
    out: ${runs}/int8
  tradeoff:
    run: tradeoff ${runs}
    out: ${runs}/tradeoff.json
    needs: [cls-a, cls-b, int8]
  extra:
    optional: true
    run: scaling fit ${runs}/pretrain --out ${runs}/extra
    out: ${runs}/extra
profiles:
  small:
    vars: {runs: RUNS-small}
    args: {pretrain: trainer.max_steps=5}
"""


class FakeRunner:
    """Writes the output a stage names (--out X, out_dir=X, or tradeoff's DIR/tradeoff.json)
    and remembers what ran; `fail` / `interrupt` make a stage exit 2 / 130."""

    def __init__(self, fail=(), interrupt=()):
        self.ran: list[str] = []
        self.fail, self.interrupt = set(fail), set(interrupt)

    def __call__(self, argv: list[str]) -> int:
        name = next((a.split("=", 1)[1] for a in argv if a.startswith("out_dir=")), None)
        if "--out" in argv:
            name = argv[argv.index("--out") + 1]
        if argv[0] == "tradeoff":
            name = argv[1] + "/tradeoff.json"
        self.ran.append(Path(name).name)
        if Path(name).name in self.interrupt:
            (Path(name) / "checkpoints" / "step-000010").mkdir(parents=True)
            return 130
        if Path(name).name in self.fail:
            return 2
        if name.endswith(".json"):
            Path(name).write_text("{}")
        else:
            Path(name).mkdir(parents=True, exist_ok=True)
            (Path(name) / "summary.json").write_text(json.dumps({"argv": argv}))
        return 0


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("recipe.yaml").write_text("trainer:\n  max_steps: 10\n")
    text = (
        PIPELINE.replace("RUNS", str(tmp_path / "runs"))
        .replace("DATA", str(tmp_path / "data"))
        .replace("CONFIG", "recipe.yaml")
    )
    Path("pipe.yaml").write_text(text)
    return tmp_path


def run(runner, **kw):
    p = pipeline.load("pipe.yaml", kw.pop("profile", None))
    return p, pipeline.run(p, runner, echo=lambda *_: None, **kw)


def test_inputs_are_read_from_command_lines_and_configs(toy):
    p = pipeline.load("pipe.yaml")
    assert p.stage("pretrain").needs == ["tokenizer"]
    assert p.stage("cls-a").needs == ["pretrain", "task"]
    assert p.stage("int8").needs == ["cls-a"]
    assert p.stage("tradeoff").needs == ["cls-a", "cls-b", "int8"]
    # The recipe file is an input of its own: fingerprinted by content.
    assert "recipe.yaml" in p.stage("pretrain").external
    # The run root holds every output: it is not an input of `tradeoff runs/`.
    assert p.stage("tradeoff").external == {}


def test_second_run_is_all_cached_and_a_change_reruns_only_its_branch(toy):
    first = FakeRunner()
    _, state = run(first)
    assert first.ran == [
        "corpus",
        "tokenizer",
        "pretrain",
        "task",
        "cls-a",
        "cls-b",
        "int8",
        "tradeoff.json",
    ]  # `extra` is optional
    assert all(r["status"] == "done" for r in state["stages"].values())

    again = FakeRunner()
    _, state = run(again)
    assert again.ran == []
    assert all(r["cached"] for r in state["stages"].values())

    # One classification option changes: that classifier, what consumes it, nothing else.
    text = Path("pipe.yaml").read_text()
    Path("pipe.yaml").write_text(
        text.replace("out_dir=${runs}/cls-a", "out_dir=${runs}/cls-a lora.r=8")
    )
    branch = FakeRunner()
    run(branch)
    assert branch.ran == ["cls-a", "int8", "tradeoff.json"]

    # A recipe file edited upstream re-runs everything that consumes it, directly or not.
    Path("recipe.yaml").write_text("trainer:\n  max_steps: 20\n")
    edit = FakeRunner()
    run(edit)
    assert edit.ran == ["pretrain", "cls-a", "cls-b", "int8", "tradeoff.json"]


def test_a_deleted_output_is_rebuilt(toy):
    run(FakeRunner())
    (toy / "runs" / "int8" / "summary.json").unlink()
    (toy / "runs" / "int8").rmdir()
    p = pipeline.load("pipe.yaml")
    assert pipeline.status(p, p.stage("int8"), pipeline.read_state(p)) == "missing output"
    again = FakeRunner()
    run(again)
    assert again.ran == ["int8"]


def test_interrupted_stage_resumes_with_its_checkpoints_and_a_changed_one_starts_over(toy):
    _, state = run(FakeRunner(interrupt={"pretrain"}))
    assert state["interrupted"] == "pretrain"
    assert state["stages"]["pretrain"]["status"] == "running"
    assert "cls-a" not in state["stages"]  # nothing after it ran
    ckpt = toy / "runs" / "pretrain" / "checkpoints" / "step-000010"
    p = pipeline.load("pipe.yaml")
    assert pipeline.status(p, p.stage("pretrain"), pipeline.read_state(p)) == "interrupted"

    # Same recipe: the checkpoints stay for the trainer to resume from.
    seen = []

    def resume(argv):
        if argv[0] == "pretrain":
            seen.append(ckpt.exists())
        return FakeRunner()(argv)

    run(resume)
    assert seen == [True]

    # A failed run of a changed recipe must not continue from the old checkpoints.
    run(FakeRunner(interrupt={"pretrain"}), force=True)
    Path("recipe.yaml").write_text("trainer:\n  max_steps: 99\n")
    seen.clear()
    run(resume)
    assert seen == [False]


def test_failure_stops_the_run_and_says_what_to_do(toy):
    with pytest.raises(ConfigError, match=r"stage 'cls-b' failed \(exit code 2\).*have not run"):
        run(FakeRunner(fail={"cls-b"}))
    p = pipeline.load("pipe.yaml")
    state = pipeline.read_state(p)
    assert state["stages"]["cls-b"]["status"] == "failed"
    assert state["stages"]["cls-a"]["status"] == "done"
    again = FakeRunner()
    run(again)
    assert again.ran == ["cls-b", "int8", "tradeoff.json"]  # int8 comes after cls-b


def test_only_from_with_and_force(toy):
    run(FakeRunner())
    only = FakeRunner()
    run(only, only=["cls-b"])
    assert only.ran == []  # up to date
    run(only, only=["cls-b"], force=True)
    assert only.ran == ["cls-b"]

    start = FakeRunner()
    run(start, start="cls-b", force=True)
    assert start.ran == ["cls-b", "int8", "tradeoff.json"]

    optional = FakeRunner()
    run(optional, with_optional=["extra"])
    assert optional.ran == ["extra"]

    with pytest.raises(ConfigError, match="no stage 'nope'"):
        run(FakeRunner(), only=["nope"])


def test_only_refuses_when_an_input_was_never_built(toy):
    with pytest.raises(ConfigError, match=r"'int8' needs 'cls-a' .* does not exist"):
        run(FakeRunner(), only=["int8"])


def test_profile_moves_outputs_and_catches_paths_it_did_not_move(toy):
    p = pipeline.load("pipe.yaml", "small")
    assert p.stage("pretrain").out.endswith(
        "RUNS-small/pretrain".replace("RUNS", str(toy / "runs"))
    )
    assert p.stage("pretrain").argv[-1] == "trainer.max_steps=5"
    assert p.stage("pretrain").key != pipeline.load("pipe.yaml").stage("pretrain").key

    # A stage that names the default location literally would read the other profile's files.
    text = Path("pipe.yaml").read_text()
    Path("pipe.yaml").write_text(
        text.replace(
            "init=${runs}/pretrain task.path=${data}/task\n    out: ${runs}/cls-b",
            f"init={toy}/runs/pretrain task.path=${{data}}/task\n    out: ${{runs}}/cls-b",
        )
    )
    pipeline.load("pipe.yaml")  # fine without the profile
    with pytest.raises(
        ConfigError, match=r"stage 'cls-b'.*written by stage 'pretrain'.*\$\{runs\}"
    ):
        pipeline.load("pipe.yaml", "small")


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda t: t.replace("${data}/corpus --out", "${nope}/corpus --out"),
            r"\$\{nope\}.*not defined",
        ),
        (
            lambda t: t.replace("needs: [cls-a, cls-b, int8]", "needs: [cls-a, ghost]"),
            "unknown stage 'ghost'",
        ),
        (
            lambda t: t.replace(
                "    out: ${runs}/tokenizer\n", "    out: ${runs}/tokenizer\n    outs: x\n"
            ),
            "unknown key 'stages.tokenizer.outs'",
        ),
        (
            lambda t: t.replace(
                "tokenizer train --data ${data}/corpus", "tokenizer train --data ${runs}/int8"
            ),
            "'tokenizer' -> 'pretrain' -> 'cls-a' -> 'int8' -> 'tokenizer' form a cycle",
        ),
        (
            lambda t: t.replace(
                "    out: ${data}/task\n", "    out: ${data}/task\n    needs: [extra]\n"
            ),
            "'task'.*consumes 'extra', which comes after it",
        ),
        # a run line the CLI would refuse is refused when the file is read, not mid-pipeline
        (
            lambda t: t.replace("data wordnet-task --out", "data wordnet-task --from x --out"),
            "stage 'task' .*unrecognized arguments: --from x",
        ),
        (
            lambda t: t.replace(
                "quantize ${runs}/cls-a --method int8", "quantize ${runs}/cls-a --method int9"
            ),
            "stage 'int8' .*invalid choice: 'int9'",
        ),
        (
            lambda t: t.replace("tradeoff ${runs}", "tradeof ${runs}"),
            "stage 'tradeoff' .*not a verb of lmforge",
        ),
    ],
)
def test_bad_pipeline_files_are_clear_errors(toy, edit, message):
    Path("pipe.yaml").write_text(edit(Path("pipe.yaml").read_text()))
    with pytest.raises(ConfigError, match=message):
        pipeline.load("pipe.yaml")


def test_dry_run_plan_says_what_would_run_and_why(toy):
    p = pipeline.load("pipe.yaml")
    rows = pipeline.plan(p, pipeline.select(p), pipeline.read_state(p))
    assert {r["status"] for r in rows} == {"new"} and all(r["action"] == "run" for r in rows)
    run(FakeRunner())
    text = Path("pipe.yaml").read_text()
    Path("pipe.yaml").write_text(
        text.replace("out_dir=${runs}/cls-b", "out_dir=${runs}/cls-b epochs=2")
    )
    p = pipeline.load("pipe.yaml")
    rows = {r["stage"]: r for r in pipeline.plan(p, pipeline.select(p), pipeline.read_state(p))}
    assert [n for n, r in rows.items() if r["action"] == "run"] == ["cls-b", "tradeoff"]
    assert rows["cls-b"]["status"] == "changed" and rows["corpus"]["status"] == "cached"
    assert rows["corpus"]["basis"] == "last run"
    out = pipeline.format_plan(list(rows.values()))
    assert "to run: 2 of 8 stages" in out


def test_the_demo_pipeline_is_wired(tmp_path):
    """The shipped demo: every classifier feeds the trade-off, quick moves every path."""
    root = Path(__file__).resolve().parent.parent
    demo = root / "configs" / "pipeline" / "demo.yaml"
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        full = pipeline.load(demo)
        quick = pipeline.load(demo, "quick")  # raises if a path escaped the profile
    finally:
        os.chdir(cwd)
    assert [s.name for s in full.stages] == [s.name for s in quick.stages]
    assert full.stage("sft").needs == ["pretrain", "instructions"]
    assert full.stage("dpo").needs == ["instructions", "sft", "reward"]
    assert "cls-decoder-lora" in full.stage("tradeoff").needs
    for s in quick.stages:
        assert s.out.startswith(("runs/demo-quick", "data/demo-quick")), s.out
    assert textwrap.dedent(full.stage("pretrain").argv[0]) == "pretrain"
