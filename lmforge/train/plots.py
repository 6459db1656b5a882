"""Training curves as PNG, read back from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from lmforge.utils import read_jsonl


def plot_training_curves(
    metrics_path: str | Path, out_png: str | Path, title: str = ""
) -> Path | None:
    import matplotlib  # a second to import: only a run that draws pays for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(metrics_path) if Path(metrics_path).exists() else []
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r and "event" not in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    spikes = [r["step"] for r in rows if r.get("event") == "loss_spike"]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", lw=1.5, ms=3)
    for s in spikes:
        ax.axvline(s, color="red", alpha=0.3, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or "training curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png
