import json
import shutil

import numpy as np
import pytest
import torch
from helpers import tiny_config, tiny_qwen2_classifier
from test_baseline import REQUIRED, topic_csv

from lmforge.artifact import load, save_model_artifact
from lmforge.cli import main
from lmforge.model.heads import HeadConfig, SequenceClassifier
from lmforge.model.transformer import LanguageModel
from lmforge.stages.classify import ClassifyConfig, train
from lmforge.tokenizer import Tokenizer
from lmforge.train.objectives import class_weights, mask_tokens


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny 'pretrained' decoder artifact with a real tokenizer."""
    tok = Tokenizer.load(tiny_tokenizer_dir)
    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=tok.vocab_size, max_seq_len=64, pad_token_id=tok.pad_id)
    out = tmp_path_factory.mktemp("init") / "decoder"
    save_model_artifact(out, LanguageModel(cfg))
    tok.save(out)
    return out


@pytest.fixture(scope="module")
def task_csv(tmp_path_factory):
    return topic_csv(tmp_path_factory.mktemp("task"), n=240)


def recipe(tmp_path, init, data, method, **kw):
    base = dict(
        out_dir=str(tmp_path / method),
        init=str(init),
        method=method,
        task={"path": str(data), "max_length": 16},
        epochs=6,
        batch_size=16,
        speed=True,
        trainer={
            "lr": 5e-3,
            "warmup_steps": 5,
            "eval_every": 20,
            "checkpoint_every": 0,
            "progress": False,
            "precision": "fp32",
            "early_stop": {"metric": "val_macro_f1", "patience": 50},
        },
    )
    base.update(kw)
    return ClassifyConfig.model_validate(base)


def backbone(state):
    return {k: v for k, v in state.items() if k.startswith("model.")}


def test_probe_trains_only_the_head(tmp_path, decoder_dir, task_csv):
    summary = train(recipe(tmp_path, decoder_dir, task_csv, "probe"))
    assert REQUIRED <= set(summary)
    assert summary["params_trainable"] == 32 * 4  # a bias-free Linear(32 -> 4 labels)
    before = backbone(load(decoder_dir).model.state_dict())
    after = backbone(load(tmp_path / "probe").model.state_dict())
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_lora_saves_peft_adapter_and_merged_model_and_learns(
    tmp_path, decoder_dir, task_csv, monkeypatch, capsys
):
    # a machine with 1 MB free: `activation_checkpointing: auto` turns it on from the estimate
    monkeypatch.setattr("lmforge.eval.estimate.plan.available_memory_mb", lambda: 1.0)
    cfg = recipe(tmp_path, decoder_dir, task_csv, "lora", lora={"r": 4, "alpha": 8, "dropout": 0.0})
    cfg.trainer.activation_checkpointing = "auto"
    summary = train(cfg)
    assert summary["train"]["activation_checkpointing"] is True
    assert "would not fit in 1 MB" in summary["plan"]["reason"]
    printed = capsys.readouterr().out
    assert "activation checkpointing on" in printed and "/epoch" in printed
    run = tmp_path / "lora"
    cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["task_type"] == "SEQ_CLS"
    from safetensors.torch import load_file

    keys = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert any(k.endswith("q_proj.lora_A.weight") for k in keys)
    assert "base_model.model.score.weight" in keys  # transformers names a decoder head `score`
    # the merged artifact is a plain classifier with the label names
    loaded = load(run)
    assert isinstance(loaded.model, SequenceClassifier)
    assert loaded.model.head_cfg.label_names == ["animal", "food", "motion", "weather"]
    assert 0 < summary["trainable_pct"] < 100
    assert summary["macro_f1"] > 0.5, summary  # the topic words give the label away


def test_full_fine_tune_with_class_weights_beats_chance(tmp_path, decoder_dir, task_csv):
    summary = train(
        recipe(
            tmp_path,
            decoder_dir,
            task_csv,
            "full",
            class_weights="sqrt_inverse",
            label_smoothing=0.1,
            slice_columns=["label"],
        )
    )
    assert summary["params_trainable"] == summary["params_total"]
    assert summary["accuracy"] > 0.6
    assert set(summary["tier_macro_f1"]) == {"head", "mid", "tail", "rare"}
    # outputs a report needs
    for f in (
        "per_class.csv",
        "confusion.png",
        "reliability.png",
        "hardest.json",
        "predictions.parquet",
    ):
        assert (tmp_path / "full" / "eval" / "test" / f).exists()
    metrics = json.loads((tmp_path / "full" / "eval" / "test" / "metrics.json").read_text())
    assert set(metrics["slices"]) == {"tokens", "truncated", "label"}
    # slicing by the label column itself: each slice holds exactly one class's examples
    assert sum(v["n"] for v in metrics["slices"]["label"].values()) == metrics["num_examples"]


def test_cli_eval_predict_compare(tmp_path, decoder_dir, task_csv, capsys):
    for method in ("probe", "full"):
        train(recipe(tmp_path, decoder_dir, task_csv, method, epochs=2, speed=False))
    capsys.readouterr()
    assert main(["classify", "eval", str(tmp_path / "probe"), "--split", "val"]) == 0
    assert "macro_f1" in json.loads(capsys.readouterr().out)
    new = tmp_path / "new.csv"
    new.write_text("id,body\n1,dog cat wolf\n2,\n")
    out = tmp_path / "preds.jsonl"
    predict = [
        "classify",
        "predict",
        str(tmp_path / "full"),
        "--input",
        str(new),
        "--output",
        str(out),
    ]
    assert main([*predict, "--text-column", "body"]) == 0
    capsys.readouterr()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["1", "2"] and all(r["predicted"] for r in rows)
    assert main(predict) == 2  # the default text column does not exist
    assert "no column 'text'" in capsys.readouterr().err
    capsys.readouterr()
    assert (
        main(["compare", str(tmp_path / "full"), str(tmp_path / "probe"), "--resamples", "50"]) == 0
    )
    res = json.loads(capsys.readouterr().out)
    d = res["macro_f1_difference_a_minus_b"]["overall"]
    assert d["ci95"][0] <= d["delta"] <= d["ci95"][1]
    assert "rare" in res["macro_f1_difference_a_minus_b"]


def test_missing_init_is_a_clear_error_and_writes_nothing(tmp_path, task_csv):
    cfg = recipe(tmp_path, tmp_path / "nope", task_csv, "lora")
    with pytest.raises(Exception, match="does not exist"):
        train(cfg)
    assert not (tmp_path / "lora").exists()


def test_decoder_pooling_matches_transformers_qwen2_left_and_right_padding():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tiny_config(n_kv_head=2, attn_qkv_bias=True, pad_token_id=0, rope_theta=10000.0)
    ours = SequenceClassifier(cfg, HeadConfig(num_labels=3)).eval()
    hf = tiny_qwen2_classifier(cfg, num_labels=3)
    hf = hf.eval()
    state = {
        ("score.weight" if k == "classifier.weight" else k): v for k, v in ours.state_dict().items()
    }
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    rows = [[5, 6, 7, 8, 9], [11, 12, 13]]
    for side in ("right", "left"):
        ids = torch.zeros(2, 5, dtype=torch.long)
        mask = torch.zeros(2, 5, dtype=torch.long)
        for i, r in enumerate(rows):
            sl = slice(0, len(r)) if side == "right" else slice(5 - len(r), 5)
            ids[i, sl], mask[i, sl] = torch.tensor(r), 1
        with torch.no_grad():
            want = hf(input_ids=ids, attention_mask=mask).logits
            got = ours(ids, attention_mask=mask)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_class_weights():
    from sklearn.utils.class_weight import compute_class_weight

    counts = [90, 9, 1, 0]
    w = class_weights(counts, "sqrt_inverse")
    assert w[3] == 0 and abs(float(w[:3].mean()) - 1) < 1e-6 and w[2] > w[1] > w[0]
    y = np.repeat([0, 1, 2], counts[:3])
    sk = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=y)
    assert np.allclose(class_weights(counts, "balanced")[:3].numpy(), sk)
    assert class_weights(counts, "none") is None


def test_mlm_masking_rates_and_specials():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 100, (64, 128))
    ids[:, 0] = 1  # BOS is never masked
    corrupted, labels = mask_tokens(
        ids, mask_id=5, vocab_size=100, special_ids=[1, 0, 2], rate=0.3, generator=g
    )
    chosen = labels >= 0
    assert not chosen[:, 0].any()
    assert abs(chosen.float().mean().item() - 0.3 * 127 / 128) < 0.01
    assert torch.equal(labels[chosen], ids[chosen])
    as_mask = (corrupted == 5) & chosen
    unchanged = (corrupted == ids) & chosen
    assert abs(as_mask.sum().item() / chosen.sum().item() - 0.8) < 0.02
    assert 0.08 < unchanged.sum().item() / chosen.sum().item() < 0.12  # 10% kept (+ random hits)
    assert torch.equal(corrupted[~chosen], ids[~chosen])


def _batch(loaded, texts, max_length=16):
    from lmforge.data.tasks import pad_batch

    ids, _ = loaded.tokenizer.encode_for_classification(texts, max_length)
    return pad_batch(ids, loaded.model.cfg.pad_token_id, "right")


def _exported_logits_agree(run, export, texts, num_labels):
    """The run's merged classifier, its transformers export, and PEFT's adapter on the exported
    base all give the same logits."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    ours = load(run)
    batch = _batch(ours, texts)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    want = ours.model(ids, attention_mask=mask)
    auto = transformers.AutoModelForSequenceClassification
    merged = auto.from_pretrained(export).eval()
    assert (merged(input_ids=ids, attention_mask=mask).logits - want).abs().max() < 1e-4
    base = auto.from_pretrained(export / "base", num_labels=num_labels).eval()
    with_adapter = peft.PeftModel.from_pretrained(base, export / "adapter").eval()
    assert (with_adapter(input_ids=ids, attention_mask=mask).logits - want).abs().max() < 1e-4
    return merged


def test_lora_decoder_run_exports_for_transformers_and_peft(tmp_path, decoder_dir, task_csv):
    train(
        recipe(
            tmp_path,
            decoder_dir,
            task_csv,
            "lora",
            epochs=1,
            speed=False,
            eval_splits=["val"],
            lora={"r": 4, "alpha": 8, "dropout": 0.0},
        )
    )
    assert main(["convert", "--to-hf", str(tmp_path / "lora"), "--out", str(tmp_path / "x")]) == 0
    merged = _exported_logits_agree(
        tmp_path / "lora", tmp_path / "x", ["dog cat rain", "the soup and bread"], 4
    )
    assert type(merged).__name__ == "LlamaForSequenceClassification"
    assert merged.config.id2label[0] == "animal"


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny transformers BertModel with a WordPiece vocab.txt (no tokenizer.json)."""
    transformers = pytest.importorskip("transformers")
    from test_baseline import TOPICS

    words = sorted({w for ws in TOPICS.values() for w in ws} | set("the a of with and in".split()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    out = tmp_path_factory.mktemp("bert") / "bert"
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    transformers.BertModel(cfg).save_pretrained(out)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return out


def test_classify_from_a_transformers_bert_with_lora_exports_for_peft(tmp_path, bert_dir, task_csv):
    """init is a Hugging Face directory: BERT's pooler + classifier head, [CLS] pooling, and a
    LoRA adapter whose keys and targets are BERT's own names."""
    summary = train(
        recipe(
            tmp_path,
            bert_dir,
            task_csv,
            "lora",
            epochs=2,
            speed=False,
            eval_splits=["val"],
            lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        )
    )
    run = tmp_path / "lora"
    assert summary["adapter_hf_names"] is True
    head = load(run).model.head_cfg
    assert (head.head, head.pooling) == ("pooler_tanh", "cls")
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert "bert.encoder.layer.0.attention.self.query" in config["target_modules"]
    assert main(["convert", "--to-hf", str(run), "--out", str(tmp_path / "x")]) == 0
    merged = _exported_logits_agree(run, tmp_path / "x", ["dog cat rain", "the soup bread"], 4)
    assert type(merged).__name__ == "BertForSequenceClassification"


def test_a_sentence_transformers_backbone_is_read_through_its_own_pooling(
    tmp_path, bert_dir, task_csv, capsys
):
    """A sentence-transformers BERT (modules.json + 1_Pooling, as all-MiniLM-L6-v2 ships) was
    trained to be mean-pooled: the classifier's auto head is its pooling plus one Linear, not
    BERT's [CLS] pooler; such a head cannot become a BertForSequenceClassification, and the
    export says so instead of writing a model whose pooler transformers would re-initialise."""
    st = tmp_path / "st"
    shutil.copytree(bert_dir, st)
    (st / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
            ]
        )
    )
    (st / "1_Pooling").mkdir()
    modes = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}
    (st / "1_Pooling" / "config.json").write_text(json.dumps(modes))
    train(recipe(tmp_path, st, task_csv, "full", epochs=1, speed=False, eval_splits=["val"]))
    head = load(tmp_path / "full").model.head_cfg
    assert (head.head, head.pooling, head.bias) == ("linear", "mean", True)
    assert main(["convert", "--to-hf", str(tmp_path / "full"), "--out", str(tmp_path / "x")]) == 2
    assert "head.head=pooler_tanh head.pooling=cls" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    modes["pooling_mode_mean_tokens"], modes["pooling_mode_cls_token"] = False, True
    (st / "1_Pooling" / "config.json").write_text(json.dumps(modes))
    train(recipe(tmp_path / "b", st, task_csv, "full", epochs=1, speed=False, eval_splits=["val"]))
    head = load(tmp_path / "b" / "full").model.head_cfg
    assert (head.head, head.pooling) == ("linear", "cls")


def _hf_backbone(family, tok, out):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    v = tok.vocab_size
    if family == "modernbert":
        model = transformers.ModernBertModel(
            transformers.ModernBertConfig(
                vocab_size=v,
                hidden_size=32,
                intermediate_size=48,
                num_hidden_layers=3,
                num_attention_heads=4,
                local_attention=8,
                global_attn_every_n_layers=2,
                pad_token_id=tok.pad_id,
                bos_token_id=tok.bos_id,
                eos_token_id=tok.eos_id,
                cls_token_id=tok.bos_id,
                sep_token_id=tok.eos_id,
                classifier_pooling="mean",
            )
        )
    else:
        model = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(
                vocab_size=v,
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=64,
                bos_token_id=tok.bos_id,
                eos_token_id=tok.eos_id,
                pad_token_id=tok.pad_id,
            )
        )
    model.save_pretrained(out)
    tok.save(out)
    return out


@pytest.mark.parametrize(
    "family,targets", [("modernbert", ["Wqkv", "Wo", "Wi"]), ("gpt2", ["c_attn", "c_proj"])]
)
def test_lora_on_fused_families_exports_an_exact_fused_peft_adapter(
    tmp_path, tiny_tokenizer_dir, task_csv, family, targets
):
    """ModernBERT (Wqkv, Wi) and GPT-2 (c_attn) fuse layers lmforge keeps apart: the run's
    adapter keeps lmforge's names, and `convert --to-hf` rewrites it as one adapter per fused
    matrix (rank k*r, block-diagonal B) that PEFT loads onto the exported base, same logits."""
    tok = Tokenizer.load(tiny_tokenizer_dir)
    init = _hf_backbone(family, tok, tmp_path / family)
    summary = train(
        recipe(
            tmp_path,
            init,
            task_csv,
            "lora",
            epochs=1,
            speed=False,
            eval_splits=["val"],
            lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": targets},
        )
    )
    assert summary["adapter_hf_names"] is False
    assert main(["convert", "--to-hf", str(tmp_path / "lora"), "--out", str(tmp_path / "x")]) == 0
    config = json.loads((tmp_path / "x" / "adapter" / "adapter_config.json").read_text())
    fused = "model.layers.0.attn.Wqkv" if family == "modernbert" else "transformer.h.0.attn.c_attn"
    assert config["rank_pattern"][fused] == 12 and config["alpha_pattern"][fused] == 24
    _exported_logits_agree(tmp_path / "lora", tmp_path / "x", ["dog cat rain", "the soup"], 4)


def test_frozen_bf16_needs_bf16_compute(tmp_path, decoder_dir, task_csv):
    from lmforge.errors import ConfigError

    cfg = recipe(tmp_path, decoder_dir, task_csv, "lora", frozen_dtype="bf16")
    with pytest.raises(ConfigError, match="trainer.precision=bf16"):
        train(cfg)
    assert not (tmp_path / "lora" / "summary.json").exists()


def test_a_bf16_frozen_base_trains_on_the_same_loss_curve_as_an_fp32_one(
    tmp_path, decoder_dir, task_csv
):
    """Under bf16 autocast the matmul multiplies by the weight rounded to bf16 either way (cast
    on each forward from fp32, or held in bf16): the same numbers, so the same run."""
    from helpers import loss_by_step

    curves = {}
    for frozen in ("fp32", "bf16"):
        cfg = recipe(
            tmp_path / frozen,
            decoder_dir,
            task_csv,
            "lora",
            epochs=1,
            speed=False,
            eval_splits=["val"],
            frozen_dtype=frozen,
            lora={"r": 4, "alpha": 8, "dropout": 0.0},
        )
        cfg.trainer.precision = "bf16"
        cfg.trainer.log_every = 1
        summary = train(cfg)
        assert summary["frozen_dtype"] == frozen
        curves[frozen] = loss_by_step(tmp_path / frozen / "lora")
    assert len(curves["fp32"]) >= 10
    assert curves["bf16"] == pytest.approx(curves["fp32"], abs=1e-6)
    _merged_into_the_fp32_source_exactly(tmp_path / "bf16" / "lora", decoder_dir)


def _merged_into_the_fp32_source_exactly(run, source_dir):
    """The merged artifact: each adapter added to the source's fp32 weight in fp32, and the
    frozen weights without adapters the source's own (not their bf16 rounding)."""
    from safetensors.torch import load_file

    merged = load(run).model.state_dict()
    source = load(source_dir).model.state_dict()
    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    adapted = 0
    for name, w in source.items():
        if not name.startswith("model.layers.") or name.endswith("norm.weight"):
            continue
        a = adapter.get(f"base_model.model.{name[: -len('.weight')]}.lora_A.weight")
        if a is None:
            assert torch.equal(merged[name], w), name
            continue
        b = adapter[f"base_model.model.{name[: -len('.weight')]}.lora_B.weight"]
        adapted += 1
        assert torch.equal(merged[name], w + (b.float() @ a.float()) * 2.0), name  # alpha / r
    assert adapted == 4 * 2  # q, k, v, o in both layers
