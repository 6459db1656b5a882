"""Small builders shared by the tests (tests/ is on sys.path under pytest)."""

from lmforge.model.config import ModelConfig


def tiny_config(**overrides) -> ModelConfig:
    """A 2-layer, width-32 model config: fast enough for any test; override what matters."""
    base = dict(vocab_size=50, n_layer=2, n_embd=32, n_head=4, intermediate_size=64, max_seq_len=16)
    return ModelConfig(**{**base, **overrides})


def tiny_qwen2_classifier(cfg: ModelConfig, num_labels: int):
    """transformers' Qwen2ForSequenceClassification with the shape of one of our tiny configs."""
    import transformers

    hf_cfg = transformers.Qwen2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=False,
        num_labels=num_labels,
        pad_token_id=cfg.pad_token_id,
    )
    return transformers.Qwen2ForSequenceClassification(hf_cfg)
