"""The course's recipes end to end on the CSV the course uses (the CFPB export's columns), from a
local path: `lmforge data task` with configs/course/consumer-complaints-task.yaml, then
`lmforge classify train` with configs/course/qwen2.5-0.5b-lora.yaml on a tiny Qwen2 checkpoint
written by transformers' save_pretrained."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from lmforge.cli import main
from lmforge.tokenizer import Tokenizer

COLUMNS = [
    "Date received", "Product", "Sub-product", "Issue", "Sub-issue",
    "Consumer complaint narrative", "Company public response", "Company", "State", "ZIP code",
    "Tags", "Consumer consent provided?", "Submitted via", "Date sent to company",
    "Company response to consumer", "Timely response?", "Consumer disputed?", "Complaint ID",
]  # fmt: skip

ISSUES = {  # a current name, and (merged into it by the course's map) its pre-2017 name
    "Improper use of your report": "Improper use of my credit report",
    "Incorrect information on your report": None,
    "Trouble during payment process": None,
}
WORDS = {
    "Improper use of your report": "pulled my credit report without permission",
    "Incorrect information on your report": "my report shows an account that is not mine",
    "Trouble during payment process": "the payment did not post to my mortgage",
}


def cfpb_export(path, n=30):
    rows = []
    for k in range(n):
        for current, old in ISSUES.items():
            issue = old if old and k % 3 == 0 else current
            text = f"{WORDS[current]} case {k}"
            rows.append([f"2023-01-{k % 28 + 1:02d}", "Credit reporting", "", issue, "", text])
            # most rows of the real export have no narrative: nothing to learn from
            rows.append([f"2023-02-{k % 28 + 1:02d}", "Credit reporting", "", current, "", ""])
    rows.append(["2023-03-01", "Debt collection", "", "A rare issue", "", "only once"])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i, r in enumerate(rows):
            w.writerow(r + ["", "Acme", "CA", "90001", "", "Consent provided", "Web", "", "", "Yes", "N/A", str(i)])  # fmt: skip
    return path


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory, tiny_tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer.load(tiny_tokenizer_dir)
    out = tmp_path_factory.mktemp("qwen") / "tiny-qwen2"
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )  # no pad_token_id, as Qwen2.5's config: the recipe takes the tokenizer's
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(out)
    tok.save(out)
    return out


def test_the_course_recipes_run_on_the_cfpb_export_csv(tmp_path, qwen2_dir, capsys):
    data = tmp_path / "cc"
    assert (
        main(
            [
                "data",
                "task",
                "--config",
                "configs/course/consumer-complaints-task.yaml",
                "--out",
                str(data),
                f"path={cfpb_export(tmp_path / 'complaints.csv')}",
            ]
        )  # fmt: skip
        == 0
    )
    info = json.loads((data / "task.json").read_text())
    assert info["empty_texts_dropped"] == 90  # the rows without a narrative
    assert info["dropped_classes"] == ["A rare issue"]  # min_count 5
    labels = json.loads((data / "labels.json").read_text())["names"]
    assert labels == sorted(ISSUES)  # the old name merged into the current one

    run = tmp_path / "qwen-lora"
    args = [
        "classify", "train", "--config", "configs/course/qwen2.5-0.5b-lora.yaml",
        f"init={qwen2_dir}", f"task.path={data}", f"out_dir={run}", "epochs=2", "batch_size=8",
        "trainer.warmup_steps=2", "trainer.eval_every=0", "trainer.checkpoint_every=0",
        "trainer.progress=false", "trainer.lr=0.01", "speed=false",
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "plan: peak memory" in printed and "/epoch" in printed
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_labels"] == 3 and summary["method"] == "lora"
    assert summary["plan"]["seconds_per_epoch"] > 0
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (16, 32)
    assert sorted(adapter["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert adapter["modules_to_save"] == ["score"]  # Qwen2ForSequenceClassification's head
    from lmforge.eval.classifier import read_settings

    assert read_settings(run).padding_side == "left"  # as the course pads Qwen2.5
    # the task was tokenized once, into the task directory the three course recipes share
    assert len(list((data / "tokens").glob("*.npz"))) == 1


def test_a_hub_dataset_offline_is_a_clear_error(tmp_path):
    pytest.importorskip("datasets")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    out = subprocess.run(
        [sys.executable, "-m", "lmforge", "data", "task", "--config",
         "configs/course/consumer-complaints-task.yaml", "--out", str(tmp_path / "cc")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0
    assert "determined-ai/consumer_complaints_medium" in out.stderr
    assert "save_to_disk" in out.stderr  # how to bring the data to an offline machine
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "cc").exists()
