"""Small builders shared by the tests (tests/ is on sys.path under pytest)."""

import json
import re
from contextlib import contextmanager
from pathlib import Path

from lmforge.model.config import PRESETS, ModelConfig
from lmforge.utils import read_jsonl


def tiny_config(**overrides) -> ModelConfig:
    """A 2-layer, width-32 model config: fast enough for any test; override what matters."""
    base = dict(vocab_size=50, n_layer=2, n_embd=32, n_head=4, intermediate_size=64, max_seq_len=16)
    return ModelConfig(**{**base, **overrides})


# GPT-2's architecture in ModelConfig's terms (its preset without the sizes): learned
# positions, LayerNorm with bias, a GELU MLP, biases everywhere.
GPT2_STYLE = {
    k: PRESETS["gpt2"][k]
    for k in ("pos_embedding", "norm", "norm_bias", "mlp", "activation")
    + ("attn_qkv_bias", "attn_out_bias", "mlp_bias")
}


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


def loss_by_step(run_dir: Path) -> dict[int, float]:
    """The training loss of each step, read from a run's metrics.jsonl as written (a list, not
    a dict that would let a later row overwrite an earlier one), after checking that every
    step was logged once and in increasing order: a resumed run must replace the steps it
    lost, never log a step again."""
    rows = [
        (m["step"], m["loss"])
        for m in read_jsonl(Path(run_dir) / "metrics.jsonl")
        if "loss" in m and "event" not in m
    ]
    steps = [step for step, _ in rows]
    repeated = sorted({step for step in steps if steps.count(step) > 1})
    assert not repeated, f"steps logged more than once in {run_dir}: {repeated}"
    assert steps == sorted(steps), f"steps logged out of order in {run_dir}: {steps}"
    return dict(rows)


def last_logged_step(run_dir: Path) -> int:
    """The last training step in metrics.jsonl, read while the run may still be appending."""
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    last = 0
    for line in lines:
        try:
            m = json.loads(line)
        except json.JSONDecodeError:  # the line being written
            continue
        if "loss" in m and "event" not in m:
            last = max(last, m["step"])
    return last


def logged_past_checkpoint(run_dir: Path, step: int) -> bool:
    """True once the run has a checkpoint at `step` or later and has logged a training step
    after its newest checkpoint: killed now, it leaves steps in metrics.jsonl that its resume
    must replace (the case a resume test has to exercise)."""
    saved = [
        int(m[1])
        for p in Path(run_dir).glob("checkpoints/step-*")
        if (m := re.fullmatch(r"step-(\d+)", p.name))
    ]
    return bool(saved) and max(saved) >= step and last_logged_step(run_dir) > max(saved)


CHROMIUM = "/usr/bin/chromium"  # the system's browser (apt-get install chromium); never downloaded
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def render_page(html: Path, png: Path) -> dict:
    """Open a local HTML file in headless Chromium, screenshot the whole page to `png` and
    return what a reader would see: its height, text, URLs requested, script errors and
    whether every image decoded."""
    from playwright.sync_api import sync_playwright

    requests, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)  # a loaded 2-core machine starts Chromium slowly
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(Path(html).resolve().as_uri())
            out = {
                "height": page.evaluate("document.documentElement.scrollHeight"),
                "text": page.inner_text("body"),
                "images_loaded": page.evaluate(
                    "[...document.images].every(i => i.complete && i.naturalWidth > 0)"
                ),
                "images": page.evaluate("document.images.length"),
            }
            page.screenshot(path=str(png), full_page=True)
        finally:
            browser.close()
    return {**out, "requests": requests, "errors": errors}


@contextmanager
def running(server):
    """A bound lmforge server (infer/serve.make_server) serving on a thread; yields its URL,
    shuts it down after."""
    url = server.start()
    try:
        yield url
    finally:
        server.stop()
