"""The house's shape, checked: pyproject.toml's import-linter contracts hold (no import runs
up a layer, no recipe imports another, no cycles), and each verb is registered once with
what its callers read."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge import verbs
from lmforge.stages.summaries import SCHEMAS, Summary

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports is missing: pip install -e '.[dev]' installs import-linter")
    return subprocess.run([exe, "--no-cache"], cwd=root, capture_output=True, text=True)


def test_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract can fail: a component that imports a stage is reported."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "lmforge", copy / "lmforge")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    lora = copy / "lmforge" / "model" / "lora.py"
    lora.write_text(lora.read_text() + "\nfrom lmforge.stages import classify  # noqa\n")
    result = subprocess.run(
        [shutil.which("lint-imports", path=str(Path(sys.executable).parent)), "--no-cache"],
        cwd=copy,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(copy), "PATH": str(Path(sys.executable).parent)},
    )
    assert result.returncode != 0
    assert "lmforge.model is not allowed to import lmforge.stages" in result.stdout


def test_every_verb_that_writes_a_summary_names_its_shown_keys_in_its_schema():
    for name, verb in verbs.VERBS.items():
        if verb.summary is None:
            continue
        fields = set(verb.summary.model_fields)
        missing = [k for k in verb.summary.SHOWN if k not in fields]
        assert not missing, f"{name}: SHOWN keys not declared in {verb.summary.__name__}: {missing}"


def test_a_classifier_summary_declares_every_score_the_evaluation_keeps():
    from lmforge.eval.classification import SCORE_KEYS
    from lmforge.stages.summaries import SplitScores

    assert set(SCORE_KEYS) == set(SplitScores.model_fields)


def test_each_schema_is_registered_under_the_stage_it_reads():
    for stage, schema in SCHEMAS.items():
        assert issubclass(schema, Summary) and schema.STAGE == stage


def test_the_report_has_a_headline_for_every_stage_it_reads_through_a_schema():
    from lmforge.report.headlines import STAGE_HEADLINES

    kinds = {
        "pretrain": [{}, {"val_masked_accuracy": 0.5}, {"distill": {}}],
        "quantize": [{}, {"val_bpb": 1.0}],
    }
    for stage, schema in SCHEMAS.items():
        if stage in ("convert", "sft"):  # an import has no headline; SFT's is in answers.json
            continue
        for extra in kinds.get(stage, [{}]):
            variant = schema.lenient({"stage": stage, **extra}).variant()
            assert variant in STAGE_HEADLINES, f"{stage} ({variant}) has no report headline"


def test_the_cli_and_the_pipeline_read_a_command_line_alike():
    argv = ["quantize", "runs/cls", "--method", "int4", "--group-size", "64", "--out", "q"]
    call = verbs.parse(argv)
    assert call.verb.name == "quantize" and call.opts.group_size == 64
    from lmforge.cli import build_parser

    ns = build_parser().parse_args(argv)
    assert ns.registered == "quantize" and ns.group_size == 64 and ns.method == "int4"


def test_the_registry_imports_no_recipe_until_a_verb_runs():
    """`lmforge --help` and the data verbs start without torch, scikit-learn or scipy: the
    registry names each recipe (utils.Ref) and imports it when the verb runs."""
    code = (
        "import sys, lmforge.cli\n"
        "from lmforge import verbs\n"
        "lmforge.cli.build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert verbs.VERBS['pretrain'].recipe.__name__ == 'PretrainConfig'\n"
        "assert 'torch' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
