"""The report card of a pipeline run: one Markdown file and one self-contained HTML file.

    lmforge report runs/demo --out runs/demo/report.html

What each stage did, read back from its artifacts: headline numbers (summary.json), curves
(metrics.jsonl, drawn here), transcripts, tables and the deployment recommendation. The stages
come from RUNS_DIR/pipeline.json when `lmforge run` wrote one (order, verbs, wall times), else
from RUNS_DIR's subdirectories. Every input is optional: a missing stage omits its section (the
report ends with the commands that make it) and a damaged file becomes a note at the top of the
report, never a traceback. The HTML inlines its plots as PNG data URIs and has no scripts and no
links out: one file to mail or archive. The same PNGs go to RUNS_DIR/report_figures/ for the
Markdown (and the README's gallery).

Layout, each module importing only those listed before it: format (values and how they are
written); context (the runs and their artifacts); artifacts and figures, shared by the sections;
headlines; a module per section (machine, summary, tokenizer, curation, pretrain, midtrain,
posttrain, classification, tradeoff, scaling); html and markdown, the two renderers (they import
no other module here); build, which runs the sections and writes both pages.
"""

from lmforge.report.build import build_report
from lmforge.report.format import fmt_duration, fmt_num, fmt_pct
from lmforge.report.machine import environment

__all__ = ["build_report", "environment", "fmt_duration", "fmt_num", "fmt_pct"]
