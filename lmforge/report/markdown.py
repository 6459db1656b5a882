"""The Markdown page: the same blocks as the HTML, figures linked from RUNS_DIR/report_figures/,
every artifact string escaped (Markdown renders inline HTML)."""

from __future__ import annotations

import html


def _md_text(text: str) -> str:
    """Markdown renders inline HTML: escape the report's sentences outside `code` spans."""
    parts = text.split("`")
    return "`".join(p if i % 2 else html.escape(p, quote=False) for i, p in enumerate(parts))


def _md_cell(v) -> str:
    return html.escape(str(v), quote=False).replace("|", "\\|").replace("\n", "<br>")


def _md_quote(text: str) -> str:
    return html.escape(text, quote=False).replace("\n", "  \n> ")


def render_markdown(title: str, meta: str, blocks: list, fig_ref) -> str:
    lines = [f"# {title}", "", _md_text(meta), ""]
    for b in blocks:
        kind = b[0]
        if kind in ("h2", "h3"):
            lines += [f"## {b[2]}" if kind == "h2" else f"### {_md_text(b[1])}", ""]
        elif kind in ("p", "note", "callout"):
            lines += [{"p": "", "note": "> **Note:** ", "callout": "> "}[kind] + _md_text(b[1]), ""]
        elif kind == "list":
            lines += [f"- {_md_text(i)}" for i in b[1]] + [""]
        elif kind == "cards":
            lines += [f"- **{k}**: {_md_cell(v)} ({_md_cell(s)})" for k, v, s in b[1]] + [""]
        elif kind in ("table", "kv"):
            head, rows = (b[1], b[2]) if kind == "table" else (["", ""], b[1])
            lines += ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows] + [""]
        elif kind == "img":
            lines += [f"![{b[2]}]({fig_ref(b[1])})", "", f"*{b[2]}*", ""]
        elif kind == "chat":
            lines += ["\n>\n".join(f"> **{who}:** {_md_quote(text)}" for _, who, text in b[1]), ""]
        elif kind == "sample":
            lines += [f"> **{_md_quote(b[1])}**{_md_quote(b[2])}", ""]
    return "\n".join(lines)
