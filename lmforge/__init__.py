"""lmforge: from raw text to a language model you can fine-tune, compress, talk to and deploy.

import lmforge
loaded = lmforge.load("runs/demo/pretrain")   # .model, .tokenizer, .config
"""

__version__ = "0.1.0"


def load(path, device="cpu", dtype=None):
    """The model, tokenizer and config of any lmforge artifact directory."""
    from lmforge.artifact import load as _load  # `import lmforge` stays light: no torch

    return _load(path, device=device, dtype=dtype)


__all__ = ["load", "__version__"]
