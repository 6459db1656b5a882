"""The measured run: one real step of our own modules (the stages' models, LoRA, loss
functions, optimizer and the trainer's autocast), its peak live tensor memory and its time,
the check on the arithmetic of `memory`."""

from __future__ import annotations

import copy
import time

import torch
from torch.profiler import ProfilerActivity, profile

from lmforge.eval.estimate.memory import MB, check_lora_targets
from lmforge.model.build import build_model
from lmforge.model.config import ModelConfig
from lmforge.model.lora import LoraConfig, apply_lora
from lmforge.model.transformer import set_activation_checkpointing
from lmforge.train import objectives
from lmforge.train.device import autocast, tune_cpu_allocator
from lmforge.train.optim import build_optimizer


def _live_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (tied weights and views count once)."""
    seen = {}
    for x in tensors:
        s = x.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def _profiled_peak_bytes(fn) -> int:
    """The highest sum of live tensor bytes allocated inside ``fn`` (over what was live before).

    torch's profiler with profile_memory=True records every allocation and free of the CPU
    allocator with its size; summing them in order gives live bytes at each moment. Unlike
    the process's peak RSS it sees neither the allocator's cached pages, the Python heap, nor
    memory of earlier steps, so it is the quantity the estimate describes."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak


def build_step(
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
    device: str = "cpu",
    activation_checkpointing: bool = False,
    seed: int = 0,
):
    """(model, step, resident): one real step of ``method`` as lmforge's stages run it (our
    modules, apply_lora, build_optimizer, the stages' loss functions, the trainer's autocast,
    clipping and zero_grad(set_to_none)); ``resident`` lists the tensors that live across steps."""
    if device == "cpu":
        tune_cpu_allocator()  # as the trainer does: reuse freed pages instead of faulting them in
    kind = "decoder" if cfg.causal else "encoder"
    if method == "probe" and num_labels is None:
        num_labels = 2
    torch.manual_seed(seed)
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, cfg.vocab_size, (batch, seq + 1), generator=g).to(dev)
    head_modules: list[str] = []
    if num_labels is not None:  # the family's own head, as stages/classify.py picks it
        if kind == "decoder":
            style = dict(head="linear", pooling="last")
        else:
            style = dict(head="dense_norm", pooling="mean", bias=True)
        cfg = cfg.model_copy(update={"pad_token_id": cfg.pad_token_id or 0})
        model = build_model(
            "sequence_classifier", cfg, {"head": {**style, "num_labels": num_labels}}
        )
        head_modules = ["classifier"] + (["head"] if style["head"] != "linear" else [])
        data = {
            "input_ids": ids[:, :-1],
            "attention_mask": torch.ones_like(ids[:, :-1]),
            "labels": ids[:, 0] % num_labels,
        }
        loss_fn = objectives.classification_loss_fn()
    elif kind == "decoder":
        model = build_model("causal_lm", cfg)
        data = {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}
        loss_fn = objectives.clm_loss
    else:
        model = build_model("masked_lm", cfg)
        data = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}

        def loss_fn(m, b):
            return m.loss(b["input_ids"], b["labels"]), b["input_ids"].numel()

    model.to(dev)
    set_activation_checkpointing(model, activation_checkpointing)  # per block, as the trainer
    reference = None
    if method == "lora":
        targets = check_lora_targets(cfg, lora_targets)
        lora = LoraConfig(r=lora_r, alpha=2 * lora_r, dropout=lora_dropout, target_modules=targets)
        apply_lora(model, lora, modules_to_save=head_modules)
    elif method == "probe":
        for name, p in model.named_parameters():
            p.requires_grad = name.split(".")[0] in head_modules
    elif method == "dpo":
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        pairs = torch.randint(3, cfg.vocab_size, (2 * batch, seq + 1), generator=g).to(dev)
        answer = torch.zeros_like(pairs, dtype=torch.bool)
        answer[:, seq // 2 :] = True
        data = {"input_ids": pairs, "answer": answer}
        loss_fn = objectives.dpo_loss_fn(reference, beta=0.1)[0]

    precision = "fp32" if dtype == "fp32" else "bf16"  # the trainer has no fp16: as bf16
    if method == "inference":
        model.eval().requires_grad_(False)
        if dtype != "fp32":
            model.to(torch.bfloat16 if dtype == "bf16" else torch.float16)
        x = data["input_ids"]

        def step():
            with torch.no_grad():
                model(x)

        return model, step, [*model.parameters(), *model.buffers(), x]

    model.train()
    opt = build_optimizer(model, 1e-4, 0.1, (0.9, 0.95), 1e-8)

    def step():
        with autocast(dev, precision):
            loss, _ = loss_fn(model, data)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # AdamW creates its states at the first update: from here on they are resident

    def states():
        return [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]

    resident = [*model.parameters(), *model.buffers(), *states(), *data.values()]
    if reference is not None:
        resident += [*reference.parameters(), *reference.buffers()]
    return model, step, resident


def measure(
    cfg: ModelConfig,
    method: str,
    batch: int,
    seq: int,
    dtype: str = "bf16",
    *,
    timed_steps: int = 0,
    **options,
) -> dict:
    """Peak live tensor memory (MiB) of one real step - the resident weights, optimizer states
    and batch plus the profiler's peak of what the step allocates - and, with ``timed_steps``,
    the fastest of that many steps in seconds (timed without the profiler; the fastest, as
    `calibrate` takes, is the least disturbed by other processes)."""
    model, step, resident = build_step(cfg, method, batch, seq, dtype, **options)
    if options.get("device", "cpu").startswith("cuda"):  # CUDA's allocator keeps the count
        torch.cuda.reset_peak_memory_stats()
        step()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _live_bytes(resident) + _profiled_peak_bytes(step)
    out = {
        "peak_mb": peak / MB,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if timed_steps:
        out["seconds_per_step"] = _fastest_step(step, timed_steps, options.get("device", "cpu"))
    return out


def _fastest_step(step, n: int, device: str, budget_s: float = 0.0) -> float:
    """Seconds of the fastest of ``n`` steps (more, up to 10, while within ``budget_s``): the
    one least disturbed by other processes sharing the machine."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < n or (len(times) < 10 and time.perf_counter() - start < budget_s):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)
