"""The analytic model of one step: parameters, peak memory and FLOPs from the config alone (no
weights read, no tensors allocated).

Precision means what lmforge's trainer does (train/trainer.py, train/device.py):

- training, ``fp32``: weights, gradients, AdamW states and activations in fp32.
- training, ``bf16``: autocast. fp32 master weights, fp32 gradients, fp32 AdamW states; matmuls
  run in bf16, so activations a Linear or attention keeps are bf16, while the residual stream,
  the norms and the loss stay fp32. Autocast also keeps a bf16 copy of every matmul weight from
  the forward to the backward (2 bytes per matmul parameter). ``fp16`` is costed like bf16 (same
  sizes; our trainer does not run fp16).
- ``inference``: the weights themselves in the dtype (``model.to(torch.bfloat16)``), no autograd.

Memory is the peak of live tensors during a step, from what our own modules keep for the
backward pass (counted tensor by tensor from their autograd graph; `measure` checks it):

    peak = weights + AdamW states + max(autocast weight copies + activations, gradients)
           [+ the reference model's weights for DPO]

Gradients are set to None after each update, so during the backward gradients grow while the
saved activations (and autocast's weight copies) are released layer by layer: the two peak at
opposite ends of the backward, and the optimizer step then holds weights + gradients + states.
With gradient accumulation the gradients of the first micro-batch stay live through the next
ones: both count in full.

Per layer, with b batch, t sequence, d width, q = heads x head dim, i the MLP width, h heads and
``a`` the bytes of a matmul activation (2 under bf16 autocast, 4 in fp32), our block keeps:
norm inputs (fp32, +the normalised input for RMSNorm's weight gradient), each Linear's input
that its weight gradient needs (one shared fp32 tensor, or one bf16 cast per Linear under
autocast), q, k and v after RoPE (k, v repeated to all heads for grouped-query attention),
the softmax probabilities (b h t^2; +their fp32 copy under autocast) on the CPU's plain-maths
attention path (t <= 512), or only q, k, v, output and log-sum-exp on a fused SDPA kernel
(GPU, longer CPU sequences), and SwiGLU's gate, activation, up and product (4 b t i).
Full training in fp32 is b t (6d + 4q + 4i) + b h t^2 words per layer: the same terms as
Korthikanti et al. 2022 ("Reducing Activation Recomputation", sbh(34 + 5as/h) bytes in 16 bit),
adapted to SwiGLU, RMSNorm, GQA and our fp32 softmax. LoRA keeps fewer: a frozen Linear needs
no input for a weight gradient, a frozen norm no normalised input. The logits: the fp32
log-probabilities (b t V) are kept for the loss, and the backward of the cross-entropy holds two
more b t V fp32 tensors at once (its output gradient and its input gradient), which for small
models with large vocabularies is most of the peak.

Activation checkpointing (per block; lmforge's trainer does not do it yet) keeps only each
block's input (b t d fp32) and recomputes one block at a time in the backward.

FLOPs: 6N per token for full training with N the matmul parameters (blocks + LM head), plus
attention's 12 L h q t (PaLM, App. B) - `scaling_laws.accounting`. A forward is a third of that.
LoRA: forward 2N, backward still carries activation gradients through the frozen base (2N) and
adds the adapters' small weight gradients; a probe runs the backbone forward only; DPO trains the
policy on chosen + rejected (6N each) and runs the reference forward on both (2N each);
inference is the forward, 2N per token. Time per step divides by the FLOP/s a small training
step of our own Transformer reached on this machine (`calibrate`): a rough figure, since
bigger matmuls run closer to the peak.
"""

from __future__ import annotations

from lmforge.errors import ConfigError
from lmforge.model.config import ModelConfig
from lmforge.model.lora import lora_targets
from lmforge.model.transformer import CPU_MATH_ATTENTION_MAX_LEN

METHODS = ("full", "lora", "probe", "dpo", "inference")
DTYPES = {"fp32": 4, "bf16": 2, "fp16": 2}  # bytes per element
MB = 2**20
F32 = 4

# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def _block_linears(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) features of each Linear in one block, by our (Hugging Face) module name."""
    d, i = cfg.n_embd, cfg.intermediate_size
    q, kv = cfg.n_head * cfg.dim_per_head, cfg.kv_heads * cfg.dim_per_head
    out = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d)}
    if cfg.mlp in ("swiglu", "geglu"):
        out["gate_proj"] = (d, i)
    return {**out, "up_proj": (d, i), "down_proj": (i, d)}


def check_lora_targets(cfg: ModelConfig, names) -> list[str]:
    """Our names of the Linear layers ``names`` puts adapters on, or an error naming this
    model's layers when one is not among them."""
    known = _block_linears(cfg)
    targets = list(dict.fromkeys(names))
    if any(n not in known for n in targets):
        targets = lora_targets(targets)  # the recipes' Hugging Face names (Wqkv, Wo, ...) -> ours
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise ConfigError(
            f"LoRA targets {unknown} are not Linear layers of this model; its layers: "
            f"{', '.join(known)} (or the Hugging Face names Wqkv, Wo, Wi, c_attn, ...)"
        )
    return targets


def _head_params(cfg: ModelConfig, kind: str, num_labels: int | None) -> int:
    """The parameters on top of the backbone (`model.*`): LM head, MLM head or classifier."""
    d, v = cfg.n_embd, cfg.vocab_size
    norm = d * (2 if cfg.norm_bias else 1)
    if num_labels is not None:  # stages/classify.py: the family's own head
        if kind == "decoder":
            return d * num_labels  # Qwen2's `score`, no bias
        if cfg.family == "bert":  # tanh pooler (with bias), classifier
            return d * d + d + d * num_labels + num_labels
        return d * d + norm + d * num_labels + num_labels  # ModernBERT: dense, norm, classifier
    if kind == "decoder":
        return 0 if cfg.tie_embeddings else v * d  # lm_head
    return d * d + norm + (0 if cfg.tie_embeddings else v * d) + v  # MaskedLM: dense, norm, decoder


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------


def _norm_saved(cfg: ModelConfig, bt: int, weight_trains: bool) -> int:
    """Bytes a norm keeps (in fp32: our norms compute in fp32): RMSNorm its input, 1/rms and,
    when its weight trains, the normalised input; LayerNorm its input, mean and 1/std. Its
    output is the next Linear's input, counted there."""
    if cfg.norm == "rmsnorm":
        return bt * cfg.n_embd * F32 * (2 if weight_trains else 1) + bt * F32
    return bt * cfg.n_embd * F32 + 2 * bt * F32


def _inputs_saved(
    bt: int, width: int, users: int, a: int, autocast: bool, lora_dropout: float
) -> int:
    """Bytes of the inputs that ``users`` Linears reading one tensor keep for their weight
    gradients: one shared tensor in fp32; under autocast each Linear casts its own bf16 copy;
    LoRA dropout gives each adapter its own dropped input and an fp32 mask (x * mask)."""
    if not users:
        return 0
    if lora_dropout:
        return users * bt * width * (a + F32)
    return (users if autocast else 1) * bt * width * a


def _block_saved(cfg, b, t, a, autocast, trains, lora_dropout, fused) -> int:
    """Bytes one block keeps for its backward besides its two norms. ``trains``: the Linears
    whose input a weight gradient needs (all in full training, the adapted ones with LoRA)."""
    bt, d, i, h = b * t, cfg.n_embd, cfg.intermediate_size, cfg.n_head
    q, kv = cfg.n_head * cfg.dim_per_head, cfg.kv_heads * cfg.dim_per_head
    gated = cfg.mlp in ("swiglu", "geglu")

    def inputs(names: list[str], width: int) -> int:
        return _inputs_saved(bt, width, sum(n in trains for n in names), a, autocast, lora_dropout)

    total = inputs(["q_proj", "k_proj", "v_proj"], d)
    if fused:  # SDPA's flash / memory-efficient kernel: q, k, v, output, fp32 log-sum-exp
        total += bt * (2 * q + 2 * kv) * a + b * h * t * F32
    else:  # plain maths: q, k and v repeated to every head, probabilities (+ their fp32 softmax)
        total += 3 * bt * q * a + b * h * t * t * (a + (F32 if autocast else 0))
    total += inputs(["o_proj"], q)
    total += inputs(["gate_proj", "up_proj"] if gated else ["up_proj"], d)
    # SwiGLU: gate (the activation's input), act(gate) and up (the product's factors); GELU: up
    total += (3 if gated else 1) * bt * i * a
    total += inputs(["down_proj"], i)  # act(gate) * up, or act(up)
    if cfg.dropout:  # masks of the two residual dropouts and the dropped probabilities (+mask)
        total += 2 * bt * d * a + (0 if fused else 2 * b * h * t * t * a)
    return total


def _forward_peak(cfg: ModelConfig, b, t, stream: int, a: int, logits: bool, fused: bool) -> int:
    """Bytes live at the high point of a forward pass that autograd does not record (inference,
    a frozen backbone, DPO's reference): the residual stream and its normed copy (``stream``
    bytes), plus the largest of attention's temporaries (q, k, v, k and v repeated, and on the
    plain-maths path the scores with their fp32 softmax: 8 bytes per score in fp32, 10 with
    bf16 scores), the MLP's three b t i tensors, or the logits."""
    bt = b * t
    q = cfg.n_head * cfg.dim_per_head
    scores = b * cfg.n_head * t * t * (8 if a == F32 else 10)
    attn = 5 * bt * q * a + (0 if fused else scores)
    mlp = 3 * bt * cfg.intermediate_size * a
    head = bt * cfg.vocab_size * a if logits else 0
    return 2 * bt * cfg.n_embd * stream + max(attn, mlp, head)


# --------------------------------------------------------------------------------------------
# The estimate
# --------------------------------------------------------------------------------------------


def estimate(
    cfg: ModelConfig,
    method: str,
    batch: int,
    seq: int,
    dtype: str = "bf16",
    *,
    lora_r: int = 16,
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    lora_dropout: float = 0.0,
    num_labels: int | None = None,
    grad_accum_steps: int = 1,
    device: str = "cpu",
    activation_checkpointing: bool | None = None,
    flops_per_s: float | None = None,
    frozen_dtype: str = "fp32",
) -> dict:
    """Parameters, peak memory (MiB) and FLOPs of one step of ``method`` on a (batch, seq)
    micro-batch. ``num_labels``: a sequence classifier (stages/classify.py) instead of the
    language-modelling head; ``probe`` always is one (2 labels unless given). DPO's ``batch`` is
    pairs: chosen and rejected run together (2 x batch rows) and a frozen copy is the reference.
    ``flops_per_s`` (from `calibrate`) adds the time per step. ``activation_checkpointing``
    only chooses which total `format_estimate` leads with; both are always computed.
    ``frozen_dtype`` "bf16" (LoRA, probe): the frozen block weights held in bf16
    (stages/classify.py's frozen_dtype)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    if batch < 1 or seq < 1:
        raise ConfigError(f"batch and seq must be positive, got batch {batch}, seq {seq}")
    kind = "decoder" if cfg.causal else "encoder"
    if method == "probe" and num_labels is None:
        num_labels = 2
    if method == "dpo" and (kind != "decoder" or num_labels is not None):
        raise ConfigError(
            "DPO trains a decoder's language-modelling head: a decoder, no num_labels"
        )
    L, d, V = cfg.n_layer, cfg.n_embd, cfg.vocab_size
    rows = 2 * batch if method == "dpo" else batch
    bt = rows * seq

    # --- parameters --------------------------------------------------------------------
    counts = cfg.count_params()
    backbone = counts["total"] - (0 if cfg.tie_embeddings else V * d)
    head = _head_params(cfg, kind, num_labels)
    lin = _block_linears(cfg)
    lora = 0
    if method == "lora":
        targets = check_lora_targets(cfg, lora_targets)
        lora = L * sum(lora_r * (lin[n][0] + lin[n][1]) for n in targets)
    params = backbone + head + lora
    trainable = {"full": params, "dpo": params, "lora": lora, "inference": 0}.get(method, head)
    if method == "lora" and num_labels is not None:
        trainable += head  # the classifier head is trained with the adapters
    # per-token matmul parameters: blocks, plus the vocabulary projection when there is one
    n_token = counts["matmul"] - (V * d if num_labels is not None else 0)
    if num_labels is None and kind == "encoder":
        n_token += d * d  # the MLM head's dense layer

    # --- precision -----------------------------------------------------------------------
    training = method != "inference"
    autocast = training and dtype != "fp32"
    weight_bytes = F32 if training else DTYPES[dtype]
    a = DTYPES[dtype]  # matmul activations (autocast) or everything (inference)

    # --- memory ------------------------------------------------------------------------------
    weights = params * weight_bytes
    frozen_low = frozen_dtype == "bf16" and method in ("lora", "probe") and autocast
    if frozen_low:  # every block matmul weight is frozen (the adapters are apart), in bf16
        weights -= n_token * (F32 - DTYPES["bf16"])
    reference = params * F32 if method == "dpo" else 0  # a frozen fp32 copy (stages/preference)
    gradients = trainable * F32
    optimizer = trainable * 2 * F32  # AdamW: exp_avg and exp_avg_sq in fp32
    fused = device != "cpu" or seq > CPU_MATH_ATTENTION_MAX_LEN
    lm_logits = num_labels is None
    if method in ("inference", "probe"):  # nothing in the backbone needs a gradient
        stream = a if method == "inference" else F32  # autocast keeps the residual in fp32
        activations = checkpointed = _forward_peak(cfg, rows, seq, stream, a, lm_logits, fused)
        autocast_copies = 0
    else:
        full = method in ("full", "dpo")
        trains = set(lin) if full else set(check_lora_targets(cfg, lora_targets))
        dropout = lora_dropout if method == "lora" else 0.0
        norm = _norm_saved(cfg, bt, weight_trains=full)
        block = _block_saved(cfg, rows, seq, a, autocast, trains, dropout, fused) + 2 * norm
        n_norms = 2 * L - (not cfg.first_attn_norm) + cfg.final_norm + cfg.embed_norm
        if not full:
            # A frozen embedding's output needs no gradient: the norms before the first
            # adapter keep nothing, nor does dropout in front of the first q/k/v adapters.
            n_norms -= cfg.embed_norm + cfg.first_attn_norm
            n_first = sum(n in trains for n in ("q_proj", "k_proj", "v_proj"))
            first_layer = -n_first * bt * d * F32 if dropout else 0
        else:
            first_layer = 0
        outside = (n_norms - 2 * L) * norm  # the embedding and final norms (less skipped ones)
        # a layer's backward: the fp32 residual gradient and the MLP's three gradients
        layer_transient = bt * d * F32 + 3 * bt * cfg.intermediate_size * a
        transient = layer_transient
        if lm_logits:
            if full:  # the LM head's input: the fp32 hidden state, or its bf16 cast
                outside += bt * d * a
            if kind == "encoder":  # MLM head: dense in and out, norm in (fp32), decoder in
                outside += bt * d * ((3 * a if full else a) + F32)
            # the fp32 log-probabilities are kept for the loss; its backward holds two more
            # b t V fp32 tensors at once (the gradients of its output and of its input)
            outside += bt * V * F32
            transient = 2 * bt * V * F32
        if method == "dpo":  # the reference's forward runs beside the policy's saved graph:
            # its logits, their fp32 copy (bf16 only) and the fp32 log-probabilities
            transient = max(transient, bt * V * (a + F32 + (F32 if a != F32 else 0)))
        activations = L * block + first_layer + outside + max(transient, layer_transient)
        # checkpointing keeps each block's input (the fp32 residual) and recomputes one block
        # at a time in the backward, whose own backward then runs
        checkpointed = L * bt * d * F32 + outside + max(transient, block + layer_transient)
        # autocast keeps a bf16 copy of each matmul weight the backward multiplies by
        # (a frozen bf16 weight is multiplied as it is: no copy)
        autocast_copies = n_token * 2 if autocast and not frozen_low else 0
    # The backward starts with every saved activation (and autocast's weight copies) live and
    # ends with every gradient live; with gradient accumulation the gradients of earlier
    # micro-batches are there from the start. A tied embedding gets its gradient twice (LM head,
    # then embedding): the second arrives as a dense V x d fp32 tensor added to the first.
    held = gradients if grad_accum_steps > 1 else 0
    tied = V * d * F32 if method in ("full", "dpo") and cfg.tie_embeddings and lm_logits else 0
    peak_act = max(held + autocast_copies + activations, gradients + tied)
    peak_ckpt = max(held + autocast_copies + checkpointed, gradients + tied)
    base = weights + reference + optimizer
    memory = {
        "weights": weights,
        "gradients": gradients,
        "optimizer": optimizer,
        "activations": activations,
        "activations_checkpointed": checkpointed,
        "autocast_weight_copies": autocast_copies,
        "reference_weights": reference,
        "total": base + peak_act,
        "total_checkpointed": base + peak_ckpt,
    }

    # --- FLOPs ---------------------------------------------------------------------------
    train_per_token = cfg.flops_per_token(seq, non_embedding_params=n_token)  # 6N + 12LhqT
    forward = train_per_token / 3
    if method == "full":
        per_token = train_per_token
    elif method == "lora":  # no gradients for the frozen weights (2N); the adapters' own 6N
        per_token = train_per_token - 2 * n_token + 6 * lora
    elif method == "dpo":  # policy trained on both answers, reference forward on both
        per_token = train_per_token + forward
    else:  # inference, probe (its head runs once per sequence, not per token)
        per_token = forward
    flops = per_token * bt + (6 * head * rows if method == "probe" else 0)

    out = {
        "model": cfg.name or cfg.family,
        "kind": kind,
        "method": method,
        "batch": batch,
        "seq": seq,
        "dtype": dtype,
        "device": device,
        "weights_dtype": "fp32" if training else dtype,
        "activations_dtype": f"{dtype} (autocast)" if autocast else dtype,
        "attention": "fused SDPA (no t x t matrix)" if fused else "plain maths (keeps t x t)",
        "params": params,
        "trainable": trainable,
        "params_matmul": n_token,
        "memory_mb": {k: v / MB for k, v in memory.items()},
        "tokens_per_step": bt,
        "flops_per_token": per_token,
        "flops_per_step": flops,
        "activation_checkpointing": bool(activation_checkpointing),
        "frozen_dtype": "bf16" if frozen_low else "fp32",
    }
    if flops_per_s:
        out["flops_per_s"] = flops_per_s
        out["seconds_per_step"] = flops / flops_per_s
    return out
