import copy

import pytest
import torch

from lmforge.model.lora import (
    LoRALinear,
    adapters_disabled,
    inject_lora,
    load_adapter,
    lora_modules,
    merge_lora,
    save_adapter,
    set_adapter,
    unmerge_lora,
)
from lmforge.model.transformer import LanguageModel, count_parameters


def trained_like(model):
    """Give every B a random value, as training would."""
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.02)


def test_fresh_adapter_gives_bit_identical_logits(tiny_cfg):
    model = LanguageModel(tiny_cfg).eval()
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 10))
    before = model(x)
    inject_lora(model, ["q_proj", "v_proj"], r=4, alpha=8)
    assert torch.equal(model(x), before)


def test_only_adapters_and_saved_modules_train(tiny_cfg):
    model = LanguageModel(tiny_cfg)
    wrapped = inject_lora(
        model, ["q_proj", "k_proj", "v_proj", "o_proj"], r=4, alpha=8, modules_to_save=["lm_head"]
    )
    assert len(wrapped) == 4 * tiny_cfg.n_layer
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("lm_head") for n in trainable)
    a = next(m for _, m in model.named_modules() if isinstance(m, LoRALinear))
    bound = 1 / (a.in_features**0.5)  # kaiming-uniform with a = sqrt(5)
    assert a.lora_A["default"].weight.abs().max() <= bound and torch.all(
        a.lora_B["default"].weight == 0
    )
    counts = count_parameters(model)
    d, q, kv = (
        tiny_cfg.n_embd,
        tiny_cfg.n_head * tiny_cfg.dim_per_head,
        tiny_cfg.kv_heads * tiny_cfg.dim_per_head,
    )
    per_layer = 4 * (d + q) + 4 * (d + kv) * 2 + 4 * (q + d)
    assert counts["trainable"] == tiny_cfg.n_layer * per_layer + tiny_cfg.vocab_size * d


def test_merge_matches_unmerged_and_unmerge_restores(tiny_cfg):
    model = LanguageModel(tiny_cfg).eval()
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 10))
    base = model(x)
    inject_lora(model, ["q_proj", "down_proj"], r=4, alpha=16)
    trained_like(model)
    unmerged = model(x)
    assert not torch.allclose(unmerged, base)
    merge_lora(model)
    torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)
    unmerge_lora(model)
    torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)
    with adapters_disabled(model):
        torch.testing.assert_close(model(x), base, atol=1e-5, rtol=0)


def with_update_by_hand(base, model, name, alpha, r):
    """The reference for one adapter: a copy of the base model whose adapted weights are
    W0 + (alpha / r) * B @ A, computed here from the paper's formula, not by lora.py."""
    ref = copy.deepcopy(base)
    for layer, m in lora_modules(model):
        w = ref.get_submodule(layer).weight
        w.data += (alpha / r) * m.lora_B[name].weight @ m.lora_A[name].weight
    return ref


def test_several_adapters_switch(tiny_cfg):
    model = LanguageModel(tiny_cfg).eval()
    base = copy.deepcopy(model)
    x = torch.randint(0, tiny_cfg.vocab_size, (1, 8))
    inject_lora(model, ["q_proj"], r=2, alpha=4, adapter_name="one")
    trained_like(model)
    with torch.no_grad():
        want_one = with_update_by_hand(base, model, "one", alpha=4, r=2)(x)
        torch.testing.assert_close(model(x), want_one, atol=1e-5, rtol=0)
        # a second adapter becomes the active one; fresh (B = 0), it leaves the base model
        inject_lora(model, ["q_proj"], r=4, alpha=2, adapter_name="two")
        assert torch.equal(model(x), base(x))
        for _, m in lora_modules(model):
            m.lora_B["two"].weight.normal_(0, 0.02)
        want_two = with_update_by_hand(base, model, "two", alpha=2, r=4)(x)
        assert not torch.allclose(want_two, want_one, atol=1e-4)
        torch.testing.assert_close(model(x), want_two, atol=1e-5, rtol=0)
        set_adapter(model, "one")
        torch.testing.assert_close(model(x), want_one, atol=1e-5, rtol=0)
        set_adapter(model, None)
        assert torch.equal(model(x), base(x))


def test_save_and_load_in_peft_format(tiny_cfg, tmp_path):
    model = LanguageModel(tiny_cfg).eval()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    inject_lora(model, ["q_proj", "v_proj"], r=4, alpha=8, modules_to_save=["lm_head"])
    trained_like(model)
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 10))
    want = model(x)
    save_adapter(
        model,
        tmp_path,
        r=4,
        alpha=8,
        dropout=0.0,
        targets=["q_proj", "v_proj"],
        modules_to_save=["lm_head"],
    )
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.lm_head.weight" in keys
    fresh = LanguageModel(tiny_cfg).eval()
    fresh.load_state_dict(base_state)
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(fresh(x), want)


def test_peft_loads_our_classifier_adapter_onto_transformers_qwen2():
    """Our adapter files, as `classify train` writes them, on the matching HF model via PEFT."""
    pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    import tempfile

    from helpers import tiny_config, tiny_qwen2_classifier

    from lmforge.model.heads import HeadConfig, SequenceClassifier

    torch.manual_seed(0)
    cfg = tiny_config(n_kv_head=2, attn_qkv_bias=True, pad_token_id=0)
    ours = SequenceClassifier(cfg, HeadConfig(num_labels=3)).eval()
    base_state = {
        ("score.weight" if k == "classifier.weight" else k): v.clone()
        for k, v in ours.state_dict().items()
    }
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    inject_lora(ours, targets, r=4, alpha=8, modules_to_save=["classifier"])
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lora_B" in name or name.startswith("classifier"):
                p.normal_(std=0.2)  # a trained adapter and head, so they change the output
    with tempfile.TemporaryDirectory() as d:
        save_adapter(
            ours,
            d,
            r=4,
            alpha=8,
            dropout=0.0,
            targets=targets,
            modules_to_save=["classifier"],
            task_type="SEQ_CLS",
            rename=lambda k: k.replace("classifier", "score"),
            hf_modules_to_save=["score"],
        )
        hf = tiny_qwen2_classifier(cfg, num_labels=3)
        hf.load_state_dict(base_state, strict=False)
        hf = peft.PeftModel.from_pretrained(hf, d).eval()
        ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
        mask = (ids != 0).long()
        with torch.no_grad():
            want = hf(input_ids=ids, attention_mask=mask).logits
            got = ours(ids, attention_mask=mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_activation_checkpointing_gives_the_same_gradients_with_dropout(tiny_cfg):
    """The recomputation replays the random dropout masks of the forward (torch keeps the RNG
    state), so adapters train exactly as without checkpointing."""
    from lmforge.model.lora import LoraConfig, apply_lora
    from lmforge.model.transformer import set_activation_checkpointing

    grads = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = LanguageModel(tiny_cfg.model_copy(update={"dropout": 0.1}))
        apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.2))
        trained_like(model)
        assert set_activation_checkpointing(model, enabled) == 1
        model.train()
        torch.manual_seed(1)
        ids = torch.randint(0, tiny_cfg.vocab_size, (2, 12))
        model(ids).float().pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_a_frozen_base_held_in_bf16_trains_fp32_adapters_and_restores_exactly(tiny_cfg):
    from lmforge.model.lora import hold_frozen_weights, restore_weights

    torch.manual_seed(0)
    model = LanguageModel(tiny_cfg)
    source = copy.deepcopy(model.state_dict())
    inject_lora(model, ["q_proj", "v_proj"], r=4, alpha=8, modules_to_save=["lm_head"])
    trained_like(model)
    rounded = hold_frozen_weights(model, torch.bfloat16)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    frozen_linears = [n for n in dtypes if n.endswith("proj.weight") or "base_layer" in n]
    assert frozen_linears and all(dtypes[n] == torch.bfloat16 for n in frozen_linears)
    # what trains stays fp32, and so do norms and embeddings
    assert all(dtypes[n] == torch.float32 for n, p in model.named_parameters() if p.requires_grad)
    assert dtypes["model.embed_tokens.weight"] == torch.float32
    assert sorted(rounded) == sorted(frozen_linears)  # random fp32 weights: every cast rounds
    # it trains under bf16 autocast; the gradients reach the fp32 adapters only
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().logsumexp(-1).mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert any("lora_A" in n for n in grads) and all(dtypes[n] == torch.float32 for n in grads)
    # back to the source's own fp32 weights, so merging is as exact as from an fp32 base
    model.float()
    restore_weights(model, source, rounded)
    for name in rounded:
        assert torch.equal(
            dict(model.named_parameters())[name], source[name.replace(".base_layer.", ".")]
        )
