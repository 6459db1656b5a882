"""What the family mappings share: activation names both ways, token ids given as lists, and
the layer prefix of the name tables."""

from __future__ import annotations

from lmforge.errors import CheckpointError

# transformers' activation names -> ours, and ours -> the name an exported config.json carries
ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
}
ACT_TO_HF = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_new"}

# A name table's rows are (lmforge name prefix pattern, HF name prefix, slot): the rest of the
# name carries over; slot k orders tensors fused along dim 0 into one HF tensor. {p} is the
# backbone's prefix inside the transformers class. LAYER matches one block.
LAYER = r"model\.layers\.(\d+)\."


def act(name: str, where: str) -> str:
    """Our activation for a transformers activation name, or an error naming the supported."""
    if name not in ACTIVATIONS:
        raise CheckpointError(
            f"{where}: activation '{name}' is not supported ({', '.join(ACTIVATIONS)})"
        )
    return ACTIVATIONS[name]


def first(x):
    """A token id that configs sometimes give as a list (several EOS ids): the first."""
    return x[0] if isinstance(x, list) else x
