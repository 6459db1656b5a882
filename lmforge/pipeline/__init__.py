"""`lmforge run pipeline.yaml`: every stage in order, cached by content hash, resumable.

A pipeline file lists stages; each stage is one lmforge command line and the path it writes:

    name: demo
    vars: {runs: runs/demo, data: data}          # ${runs} and ${data} below
    stages:
      tokenizer:
        run: tokenizer train --data ${data}/default --vocab-size 8192 --out ${runs}/tokenizer
        out: ${runs}/tokenizer
      pretrain:
        run: pretrain --config configs/demo/pretrain.yaml out_dir=${runs}/pretrain tokenizer=${runs}/tokenizer
        out: ${runs}/pretrain
    profiles:
      quick:                                     # lmforge run FILE --profile quick
        vars: {runs: runs/demo-quick}
        args: {pretrain: trainer.max_steps=20}   # appended to that stage's command line

What a stage consumes is read from its command line and its resolved config (the YAML file
plus the overrides): any path inside another stage's `out` makes that stage an input (`needs:`
adds what cannot be seen, e.g. a stage that scans a whole directory). Any other existing file
or directory it names (a config file, a label map, your own data) is fingerprinted.

A stage's key is the hash of its command line, those fingerprints, the keys of its inputs and
lmforge's version (in a development checkout also a hash of lmforge's source, since code there
changes without a new version), so a change anywhere upstream, or an upgrade, changes every key
below it. `lmforge run` skips a stage whose key
matches the one recorded when it last finished and whose output still exists; it runs the
rest in order. A stage interrupted mid-way keeps its checkpoints and resumes from them when run
again with the same key; with a different key its stale checkpoints are removed first, so a
changed recipe never continues an old run. The record is RUNS/pipeline.json (written
atomically after every stage), which the report card also reads.
"""

from lmforge.pipeline.run import (
    format_plan,
    mermaid,
    plan,
    read_state,
    run,
    select,
    stage_flops,
    status,
    subprocess_runner,
)
from lmforge.pipeline.spec import Pipeline, Stage, fingerprint, load, source_hash

__all__ = [
    "Pipeline",
    "Stage",
    "fingerprint",
    "format_plan",
    "load",
    "mermaid",
    "plan",
    "read_state",
    "run",
    "select",
    "source_hash",
    "stage_flops",
    "status",
    "subprocess_runner",
]
