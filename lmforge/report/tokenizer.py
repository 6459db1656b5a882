"""The Tokenizer section: vocabulary, training data and bytes per token."""

from __future__ import annotations

from lmforge.report.context import Context
from lmforge.report.format import fmt_count, fmt_duration, fmt_num, fmt_plain


def tokenizer_section(ctx: Context) -> list:
    if not (r := ctx.main("tokenizer")):
        return []
    s = r.summary
    bpt, docs = fmt_num(s.get("bytes_per_token_heldout")), fmt_num(s.get("heldout_documents"))
    heldout = f"{bpt} ({docs} documents)"
    rows = [
        ["vocabulary", fmt_num(s.get("vocab_size"))],
        ["training documents", fmt_num(s.get("documents"))],
        ["training bytes", fmt_count(s.get("train_bytes"))],
        ["bytes/token, training text", fmt_num(s.get("bytes_per_token_train"))],
        ["bytes/token, held-out text", heldout],
        ["training time", fmt_duration(s.get("train_seconds"))],
        ["data", fmt_plain(s.get("data"))],
    ]
    special = " ".join(f"`{t}`" for t in s.get("special_tokens") or {})
    why = (
        f"Special tokens: {special}. Bits per byte (bpb) divide a model's loss by the bytes a "
        "token holds, so runs with different tokenizers compare on bpb, not on loss."
    )
    return [("h2", "tokenizer", "Tokenizer"), ("kv", rows), ("p", why)]
