"""The Curation section: what each step removed, per source and per quality rule, and the
near-duplicate clusters."""

from __future__ import annotations

from lmforge.report.context import Context
from lmforge.report.figures import copy_figure
from lmforge.report.format import fmt_duration, fmt_num, fmt_pct, get_in, ratio


def curation_section(ctx: Context) -> list:
    if not (r := ctx.main("curation")):
        return []
    s, steps, sources = r.summary, r.summary.get("steps") or [], r.summary.get("sources") or {}

    def kept(v: dict, unit: str = "documents") -> str:
        return fmt_pct(ratio(v.get(f"{unit}_out"), v.get(f"{unit}_in")))

    text = (
        f"`{s.get('input')}` → `{s.get('output')}`: {fmt_num(s.get('documents_in'))} documents "
        f"in, {fmt_num(s.get('documents_out'))} out ({kept(s)} kept, {kept(s, 'characters')} of "
        f"the characters) in {fmt_duration(get_in(s, 'seconds.total'))}. A document is removed "
        "by the first step that rejects it."
    )
    rows = [
        [
            st.get("step"),
            fmt_num(st.get("documents_in")),
            fmt_num(st.get("documents_removed")),
            fmt_pct(ratio(st.get("documents_removed"), st.get("documents_in"))),
            fmt_num(st.get("documents_out")),
            fmt_num(st.get("characters_removed")),
        ]
        for st in steps
    ]
    head = ["step", "documents in", "removed", "share", "out", "characters removed"]
    out = [("h2", "curation", "Curation"), ("p", text), ("table", head, rows)]
    names = [st.get("step") for st in steps]
    if sources:
        rows = [
            [
                src,
                fmt_num(v.get("documents_in")),
                *(fmt_num(get_in(v, f"removed.{n}")) for n in names),
                fmt_num(v.get("documents_out")),
                kept(v),
            ]
            for src, v in sources.items()
        ]
        head = ["source", "in", *names, "out", "kept"]
        out += [("h3", "Removed, per source"), ("table", head, rows)]
    rules = [k for v in sources.values() for k in v.get("removed_by_filter") or {}]
    rules = list(dict.fromkeys(rules))  # each once, in the order met
    if rules:
        rows = [
            [rule, *(fmt_num(get_in(v, f"removed_by_filter.{rule}")) for v in sources.values())]
            for rule in rules
        ]
        out += [
            ("h3", "Quality rules: the documents each rule removed first"),
            ("table", ["rule", *sources], rows),
        ]
    if nd := s.get("near_dedup"):
        dedup = (
            f"Near duplicates: MinHash LSH at Jaccard {nd.get('threshold')} "
            f"({nd.get('bands')} bands × {nd.get('rows')} rows): "
            f"{fmt_num(nd.get('candidate_pairs'))} candidate pairs, "
            f"{fmt_num(nd.get('verified_pairs'))} verified, {fmt_num(nd.get('clusters'))} "
            f"clusters holding {fmt_num(nd.get('documents_in_clusters'))} documents."
        )
        out.append(("p", dedup))
    plot, caption = r.path / "near_dup_clusters.png", "Near-duplicate cluster sizes"
    return out + copy_figure(ctx, "curation-near-dup-clusters", plot, caption)
