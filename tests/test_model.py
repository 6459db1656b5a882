import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config

from lmforge.model.config import ModelConfig, from_preset, preset_from_depth
from lmforge.model.transformer import KVCache, LanguageModel, count_parameters


def test_preset_d6_is_the_benchmark_shape():
    cfg = preset_from_depth(6)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.intermediate_size) == (6, 384, 6, 1024)
    model = LanguageModel(cfg)
    counted = count_parameters(model)
    assert counted["total"] == cfg.count_params()["total"] == 16_913_280
    # Kaplan's N: without the input and output embeddings
    assert counted["non_embedding"] == cfg.count_params()["non_embedding"]


def test_param_count_formula_matches_modules_across_flags():
    for kw in [
        dict(attn_qkv_bias=True, tie_embeddings=True, n_kv_head=2),
        dict(
            mlp="gelu", activation="gelu", norm="layernorm", norm_bias=True, pos_embedding="learned"
        ),
        dict(
            mlp="geglu",
            activation="gelu",
            norm="layernorm",
            embed_norm=True,
            attn_out_bias=True,
            mlp_bias=True,
        ),
    ]:
        cfg = ModelConfig(
            vocab_size=101,
            n_layer=2,
            n_embd=48,
            n_head=4,
            intermediate_size=96,
            max_seq_len=32,
            **kw,
        )
        assert count_parameters(LanguageModel(cfg))["total"] == cfg.count_params()["total"], kw


def test_parameter_names_follow_hf_llama():
    names = set(LanguageModel(preset_from_depth(2)).state_dict())
    for expected in [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]:
        assert expected in names


def test_kv_cache_matches_full_forward(tiny_cfg):
    torch.manual_seed(0)
    model = LanguageModel(tiny_cfg).eval()
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 20))
    full = model(x)
    cache = model.new_cache(2, 20)
    pieces = [model(x[:, :7], cache=cache)]  # prefill 7, then 1 at a time, then a chunk of 5
    for t in range(7, 15):
        pieces.append(model(x[:, t : t + 1], cache=cache))
    pieces.append(model(x[:, 15:], cache=cache))
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"pos_embedding": "learned"}, {"global_every": 2, "local_window": 4, "n_kv_head": 2}],
    ids=["rope", "learned", "local-gqa"],
)
def test_a_per_row_cache_decodes_each_row_as_if_alone(overrides):
    """The server's batched decoding (infer/engine.py): rows at different positions, each
    one token per pass, give each sequence's own logits. The cache starts as noise, so a row
    that saw another row's keys, or its own beyond its position, would show it."""
    torch.manual_seed(0)
    model = LanguageModel(tiny_config(max_seq_len=32, **overrides)).eval()
    seqs = [torch.randint(0, 50, (n,)) for n in (3, 9, 1, 6)]
    steps = 4
    alone = [model(torch.cat([s, torch.arange(steps)])[None])[0] for s in seqs]
    cache = model.new_cache(len(seqs), 32)
    cache.k.normal_(), cache.v.normal_()
    for i, s in enumerate(seqs):  # each prompt prefilled into its own row
        row = KVCache(cache.k[:, i : i + 1], cache.v[:, i : i + 1])
        model(s[None], cache=row)
    cache.lengths = torch.tensor([len(s) for s in seqs])
    for t in range(steps):  # then the rows decode together, token t each
        logits = model(torch.full((len(seqs), 1), t), cache=cache)[:, 0]
        for i, s in enumerate(seqs):
            torch.testing.assert_close(logits[i], alone[i][len(s) + t], atol=1e-5, rtol=1e-5)
    assert cache.lengths.tolist() == [len(s) + steps for s in seqs]


def test_causal_model_does_not_see_the_future(tiny_cfg):
    model = LanguageModel(tiny_cfg).eval()
    x = torch.randint(0, tiny_cfg.vocab_size, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % tiny_cfg.vocab_size
    torch.testing.assert_close(model(x)[:, :10], model(y)[:, :10])


def test_gqa_equals_mha_with_repeated_kv_heads():
    cfg = tiny_config(n_layer=1, n_kv_head=1)
    gqa = LanguageModel(cfg).eval()
    mha = LanguageModel(cfg.model_copy(update={"n_kv_head": 4})).eval()
    sd = gqa.state_dict()
    for proj in ("k_proj", "v_proj"):
        w = sd[f"model.layers.0.self_attn.{proj}.weight"]  # (1 * 8, 32)
        sd[f"model.layers.0.self_attn.{proj}.weight"] = w.repeat(4, 1)
    mha.load_state_dict(sd)
    x = torch.randint(0, 50, (2, 12))
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-5)


def test_padding_mask_leaves_real_tokens_unchanged():
    cfg = tiny_config(causal=False)
    model = LanguageModel(cfg).eval()
    x = torch.randint(1, 50, (1, 8))
    padded = torch.cat([x, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 8), torch.zeros(1, 4)], 1).long()
    torch.testing.assert_close(
        model(padded, attention_mask=mask)[:, :8], model(x), atol=1e-5, rtol=1e-5
    )


def test_local_window_mask_is_a_band_and_global_layers_see_all():
    cfg = tiny_config(n_layer=3, max_seq_len=64, causal=False, global_every=3, local_window=8)
    model = LanguageModel(cfg).eval()
    glob, local = model.model._masks(20, 0, 20, None, torch.device("cpu"))
    assert glob[0, 0].all()
    band = local[0, 0]
    assert band[10, 6] and band[10, 14] and not band[10, 5] and not band[10, 15]  # +-4 around 10
    # the window changes the output: a model with windows != the same weights without them
    full = LanguageModel(cfg.model_copy(update={"global_every": 0, "local_window": 0})).eval()
    full.load_state_dict(model.state_dict())
    x = torch.randint(0, 50, (1, 40))
    assert not torch.allclose(model(x), full(x))


def test_head_dim_must_be_even_for_rope():
    with pytest.raises(ValueError, match="even head dimension"):
        ModelConfig(n_embd=36, n_head=4)


def test_unknown_preset_suggests_close_name():
    from lmforge.errors import ConfigError

    with pytest.raises(ConfigError, match="lmforge-d6"):
        from_preset("lmforge-d66")


def test_flops_per_token_counts_attention():
    cfg = preset_from_depth(6)
    n = cfg.count_params()["matmul"]
    assert cfg.flops_per_token(256) == 6 * n + 12 * 6 * 6 * 64 * 256


@pytest.mark.parametrize("case", ["causal", "mask", "gqa", "offset"])
def test_cpu_attention_matches_sdpa(case):
    """The written-out CPU attention must give SDPA's result for every mask it is used with."""
    from lmforge.model.transformer import attention

    torch.manual_seed(0)
    B, H, T, S, D = 2, 4, 6, 6, 8
    kv_heads = 2 if case == "gqa" else H
    if case == "offset":  # new tokens after a cached prefix: causal with an offset
        S = 9
    q = torch.randn(B, H, T, D)
    k, v = torch.randn(B, kv_heads, S, D), torch.randn(B, kv_heads, S, D)
    mask, is_causal = None, case in ("causal", "gqa")
    if case == "mask":
        mask = torch.rand(B, 1, T, S) > 0.3
        mask[..., 0] = True  # every row attends somewhere (SDPA gives NaN otherwise)
    if case == "offset":
        mask = torch.ones(T, S, dtype=torch.bool).tril(S - T)[None, None]
    want = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=kv_heads != H
    )
    got = attention(q, k, v, mask, is_causal, 0.0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_cpu_attention_fully_masked_row_is_finite():
    from lmforge.model.transformer import attention

    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    mask = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    mask[..., 0, :] = False  # a padding query that may attend to nothing
    assert torch.isfinite(attention(q, k, v, mask, False, 0.0)).all()


def test_bf16_weights_decode_the_fp32_models_greedy_tokens(tmp_path, tiny_cfg):
    """The bf16 path (weights loaded as bf16, its KV cache and attention in bf16) gives the
    fp32 model's first 16 greedy tokens where the logits' margins exceed bf16's rounding; on
    random weights at full size they do not (benchmarks/decode_speed.py reports that case)."""
    from lmforge.artifact import load, save_model_artifact
    from lmforge.infer.generate import SamplingConfig, generate_tokens

    torch.manual_seed(0)
    model = LanguageModel(tiny_cfg)
    # A model that has learned something: a sequence of 24 tokens, memorised, so its greedy
    # choices have the margins a trained model's have.
    seq = torch.randperm(tiny_cfg.vocab_size)[:24][None]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.cross_entropy(model(seq[:, :-1])[0], seq[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_model_artifact(tmp_path / "m", model.eval())
    greedy = SamplingConfig(temperature=0, max_new_tokens=16)
    prompt = seq[0, :5].tolist()
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        loaded = load(tmp_path / "m", dtype=dtype).model.eval()
        assert next(loaded.parameters()).dtype == dtype
        with torch.inference_mode():
            runs[dtype] = list(generate_tokens(loaded, prompt, greedy))
            if dtype == torch.float32:  # the test means something only if margins are real
                logits = loaded(torch.tensor([prompt + runs[dtype][:-1]]))[0, len(prompt) - 1 :]
                top2 = logits.topk(2).values
                assert (top2[:, 0] - top2[:, 1]).min() > 0.02 * logits.abs().max()
    assert len(runs[torch.float32]) == 16
    assert runs[torch.bfloat16] == runs[torch.float32]
