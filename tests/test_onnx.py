"""ONNX copies of classifiers (`lmforge quantize --method onnx|onnx-int8`): through ONNX Runtime
their logits equal ours on padded batches (left padding for a decoder, right for an encoder),
int8 is smaller and mostly agrees, and the trade-off lists both beside their source."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import tiny_config
from test_classify import decoder_dir, recipe, task_csv  # noqa: F401  (fixtures)

from lmforge.artifact import load, save_model_artifact
from lmforge.cli import main
from lmforge.data.tasks import encode_examples, pad_batch
from lmforge.eval.classifier import read_settings, run_task
from lmforge.model.heads import HeadConfig, SequenceClassifier
from lmforge.model.onnx_export import OnnxClassifier
from lmforge.model.transformer import LanguageModel

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, decoder_dir, task_csv):  # noqa: F811
    """A tiny decoder classifier trained with left padding, and its two ONNX copies beside it."""
    from lmforge.stages.classify import train

    root = tmp_path_factory.mktemp("onnx-runs")
    train(
        recipe(
            root,
            decoder_dir,
            task_csv,
            "full",
            epochs=2,
            speed=False,
            padding_side="left",
            eval_splits=["test"],
        )
    )
    for method in ("onnx", "onnx-int8"):
        argv = ["quantize", str(root / "full"), "--method", method, "--out", str(root / method)]
        assert main(argv) == 0
    return root


def _predicted(run):
    return pq.read_table(run / "eval" / "test" / "predictions.parquet").column("predicted")


def test_decoder_copy_gives_our_logits_on_a_left_padded_batch(runs):
    settings = read_settings(runs / "onnx")  # the source's settings, copied with the run
    assert settings.padding_side == "left"
    source = load(runs / "full")
    texts = [t for t, _ in run_task(runs / "full", settings).test[:32]]
    ids, _ = encode_examples(source.tokenizer, texts, settings.task.max_length)
    batch = pad_batch(ids, source.tokenizer.pad_id, settings.padding_side)
    # the batch really is padded, on the left: dropping the mask would change real tokens
    assert len({len(x) for x in ids}) > 1 and (batch["attention_mask"][:, 0] == 0).any()
    with torch.no_grad():
        want = source.model(**batch)
    got = OnnxClassifier.from_dir(runs / "onnx")(**batch)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=0, atol=1e-4)
    # and the copy's whole eval is ours: the same predictions, the same macro F1
    assert _predicted(runs / "onnx").equals(_predicted(runs / "full"))
    summary = json.loads((runs / "onnx" / "summary.json").read_text())
    full = json.loads((runs / "full" / "summary.json").read_text())
    assert summary["test"]["macro_f1"] == pytest.approx(full["test"]["macro_f1"])
    assert summary["onnx"]["max_abs_logit_diff"] < 1e-4 and summary["latency_ms_p50"] > 0


def test_encoder_copy_gives_our_logits_on_a_right_padded_batch(tmp_path):
    """A ModernBERT-like encoder: bidirectional, local-window layers, mean pooling over the mask."""
    torch.manual_seed(0)
    cfg = tiny_config(
        causal=False,
        norm="layernorm",
        mlp="geglu",
        embed_norm=True,
        global_every=2,
        local_window=4,
        vocab_size=64,
        max_seq_len=32,
        pad_token_id=0,
    )
    model = SequenceClassifier(cfg, HeadConfig(num_labels=3, pooling="mean", head="dense_norm"))
    save_model_artifact(tmp_path / "enc", model.eval(), "sequence_classifier")
    argv = ["quantize", str(tmp_path / "enc"), "--method", "onnx", "--out", str(tmp_path / "x")]
    assert main(argv) == 0
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(1, 64, (n,), generator=g).tolist() for n in (13, 5, 1, 9, 13)]
    copy = OnnxClassifier.from_dir(tmp_path / "x")
    # five rows, then one: neither is the export's example shape (the axes are dynamic)
    for batch in (pad_batch(rows, 0, "right"), pad_batch(rows[:1], 0, "right")):
        with torch.no_grad():
            want = model(**batch)
        assert torch.allclose(copy(**batch), want, rtol=0, atol=1e-4)


def test_the_copy_loads_like_any_run_and_serves_classify(runs):
    """`load` opens an ONNX copy (so classify eval/predict and serve take it), and
    /v1/classify answers with its probabilities."""
    import httpx
    from helpers import running

    from lmforge.infer.serve import Limits, make_server
    from lmforge.verbs.use import served_classifier

    copy = load(runs / "onnx")
    assert isinstance(copy.model, OnnxClassifier) and copy.kind == "sequence_classifier"
    settings = served_classifier(copy)
    assert settings["padding_side"] == "left"
    server = make_server(
        copy.model, copy.tokenizer, "onnx", port=0, limits=Limits(), classifier=settings
    )
    texts = ["a short one", "and a somewhat longer text than that"]
    with running(server) as url:
        out = httpx.post(url + "/v1/classify", json={"input": texts}, timeout=30).json()
    ids, _ = encode_examples(copy.tokenizer, texts, settings["max_length"])
    batch = pad_batch(ids, copy.tokenizer.pad_id, "left")
    probs = torch.softmax(copy.model(**batch) / settings["temperature"], -1)
    got = [row["probability"] for row in out["data"]]
    assert got == pytest.approx(probs.max(-1).values.tolist(), abs=1e-5)


def test_int8_copy_is_smaller_and_mostly_agrees_with_fp32(runs):
    fp32, int8 = runs / "onnx" / "model.onnx", runs / "onnx-int8" / "model.onnx"
    assert int8.stat().st_size < 0.6 * fp32.stat().st_size
    a, b = _predicted(runs / "onnx").to_pylist(), _predicted(runs / "onnx-int8").to_pylist()
    assert np.mean([x == y for x, y in zip(a, b)]) >= 0.8
    summary = json.loads((runs / "onnx-int8" / "summary.json").read_text())
    assert summary["onnx"]["int8"]["weight_type"] == "QInt8"
    assert summary["checkpoint_mb"] < summary["source_checkpoint_mb"]


def test_tradeoff_lists_the_onnx_copies_beside_their_source(runs):
    """What `lmforge tradeoff` reads (its full run: tests/test_quant.py): a row per copy with its
    method, speed and size, and a paired comparison with the source run."""
    from lmforge.eval.classifier import compare
    from lmforge.stages.tradeoff import collect

    rows = {r["run"]: r for r in collect(runs, "test")}
    assert set(rows) == {"full", "onnx", "onnx-int8"}
    for name in ("onnx", "onnx-int8"):
        r = rows[name]
        assert r["method"] == name and r["source"] == str(runs / "full")
        assert r["speed_note"].startswith("ONNX Runtime")
        assert r["latency_ms_p50"] > 0 and r["throughput_per_s"] > 0 and r["checkpoint_mb"] > 0
        diff = compare(r["path"], r["source"], "test", n_resamples=50)
        assert diff["examples"] == len(_predicted(runs / "full"))
    assert rows["onnx"]["macro_f1"] == pytest.approx(rows["full"]["macro_f1"])


def test_onnx_refuses_a_language_model_and_an_onnx_copy(tmp_path, runs, capsys):
    save_model_artifact(tmp_path / "lm", LanguageModel(tiny_config()))
    out = tmp_path / "x"
    assert main(["quantize", str(tmp_path / "lm"), "--method", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "causal_lm artifact" in err and "--method int8" in err and not out.exists()
    assert main(["quantize", str(runs / "onnx"), "--method", "onnx-int8", "--out", str(out)]) == 2
    assert "is an ONNX copy" in capsys.readouterr().err and not out.exists()
