"""Peak memory of importing a Hugging Face checkpoint: lmforge vs transformers.

A randomly initialised `qwen2.5-0.5b` preset (494M parameters, the real shapes) is written as a
transformers checkpoint (fp32, ~2 GB), then imported in a fresh process by each loader; the
peak resident set size (ru_maxrss) is compared with the checkpoint's size on disk. The target
(issue 4): lmforge's peak below 1.5x the fp32 checkpoint. The peak is read after one forward
pass, so memory-mapped weights that loading has not yet read count too.

    python benchmarks/hf_load_memory.py                 # qwen2.5-0.5b, ~2 GB of disk in /tmp
    python benchmarks/hf_load_memory.py --preset gpt2   # a quicker run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

WRITE = """
import sys, torch
from lmforge.model.build import build_model
from lmforge.model.config import from_preset
from lmforge.model.hf import write_hf
cfg = from_preset(sys.argv[1])
with torch.device("meta"):
    model = build_model("causal_lm", cfg)
model = model.to_empty(device="cpu")
if cfg.tie_embeddings:  # to_empty gives every module its own tensor: tie them again
    model.lm_head.weight = model.model.embed_tokens.weight
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0, 0.02)
write_hf(model, "causal_lm", {}, None, sys.argv[2])
"""

MEASURE = """
import resource, sys, json, time
import torch
import lmforge, transformers  # both imported by both, so the baselines match
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
if sys.argv[1] == "lmforge":
    m = lmforge.load(sys.argv[2]).model
else:
    m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=torch.float32)
seconds = time.perf_counter() - t
after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
# Weights may still be memory-mapped file pages that nothing has read: one forward pass over
# a short input touches every weight, so the peak below is what using the model costs.
with torch.no_grad():
    m(torch.ones(1, 8, dtype=torch.long))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
n = sum(p.numel() for p in m.parameters())
print(json.dumps({"peak_rss_mb": peak, "rss_after_load_mb": after_load,
                  "rss_before_load_mb": before, "seconds": seconds, "params": n}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="qwen2.5-0.5b")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results-hf_load_memory.json")))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        subprocess.run([sys.executable, "-c", WRITE, args.preset, str(ckpt)], check=True)
        size_mb = (ckpt / "model.safetensors").stat().st_size / 2**20
        rows = {}
        for loader in ("lmforge", "transformers"):
            out = subprocess.run(
                [sys.executable, "-c", MEASURE, loader, str(ckpt)],
                check=True,
                capture_output=True,
                text=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["peak_over_checkpoint"] = r["peak_rss_mb"] / size_mb
            r["load_over_checkpoint"] = (r["peak_rss_mb"] - r["rss_before_load_mb"]) / size_mb
            rows[loader] = r
    result = {"preset": args.preset, "checkpoint_mb": size_mb, **rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.preset}: fp32 checkpoint {size_mb:,.0f} MB")
    for loader, r in rows.items():
        print(
            f"  {loader:<13} peak RSS {r['peak_rss_mb']:8,.0f} MB = {r['peak_over_checkpoint']:.2f}x "
            f"the checkpoint after a forward pass ({r['rss_before_load_mb']:,.0f} MB before loading, "
            f"{r['rss_after_load_mb']:,.0f} MB right after), load {r['seconds']:.1f} s"
        )


if __name__ == "__main__":
    main()
