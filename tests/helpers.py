"""Small builders shared by the tests (tests/ is on sys.path under pytest)."""

from lmforge.model.config import ModelConfig


def tiny_config(**overrides) -> ModelConfig:
    """A 2-layer, width-32 model config: fast enough for any test; override what matters."""
    base = dict(vocab_size=50, n_layer=2, n_embd=32, n_head=4, intermediate_size=64, max_seq_len=16)
    return ModelConfig(**{**base, **overrides})
