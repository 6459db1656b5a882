import os

import pytest
import torch

# Tests run on 2 cores; keep torch from oversubscribing them and never reach for a hub.
torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def tiny_cfg():
    from lmforge.model.config import ModelConfig

    return ModelConfig(vocab_size=97, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, intermediate_size=64, max_seq_len=64)
