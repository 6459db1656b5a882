"""The HTML page: the report's blocks as one self-contained file (CSS inline, figures as PNG data
URIs, no scripts, no links out), every artifact string escaped."""

from __future__ import annotations

import base64
import html
import re

CSS = """
body{margin:0;background:#eef1f5;color:#1f2328;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 40px 64px;background:#fff;box-shadow:0 0 24px rgba(0,0,0,.06)}
h1{font-size:30px;margin:0 0 4px}h2{font-size:22px;margin:44px 0 10px;padding-bottom:6px;border-bottom:2px solid #e3e8ee}
h3{font-size:16px;margin:26px 0 8px;color:#24425f}.meta{color:#57606a;font-size:13px}
code{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f0f3f6;padding:1px 4px;border-radius:4px}
nav{margin:14px 0 8px;font-size:13px}nav a{display:inline-block;margin:2px 4px 2px 0;padding:3px 10px;border-radius:12px;background:#eef3fa;color:#1f5fa8;text-decoration:none}
.tw{overflow-x:auto;margin:8px 0 16px}table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:5px 10px;border-bottom:1px solid #e6eaef;text-align:left;vertical-align:top}td:first-child{white-space:nowrap}
th{background:#f3f6f9;font-weight:600;white-space:nowrap}td.n{text-align:right;white-space:nowrap}tbody tr:hover td{background:#f8fafc}
table.kv td:first-child{color:#57606a;padding-right:24px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(205px,1fr));gap:12px;margin:12px 0 18px}
.card{border:1px solid #e3e8ee;border-radius:10px;padding:10px 14px;background:linear-gradient(#fff,#f8fbff)}
.card .k{font-size:11px;letter-spacing:.05em;text-transform:uppercase;color:#57606a}
.card .v{font-size:21px;font-weight:650;color:#17589c;overflow-wrap:anywhere}.card .s{font-size:12px;color:#6e7781}
figure{margin:14px 0 22px}figure img{max-width:100%;border:1px solid #e6eaef;border-radius:8px}
figcaption{font-size:13px;color:#57606a;margin-top:4px}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px;margin:10px 0;font-size:14px}
.callout{background:#e9f6ec;border-left:4px solid #2e7d32;padding:10px 14px;margin:10px 0}
.chat{border:1px solid #e3e8ee;border-radius:10px;padding:8px 12px;margin:10px 0 14px;max-width:880px;background:#fcfdfe}
.msg{margin:6px 0;padding:7px 12px;border-radius:12px;white-space:pre-wrap;overflow-wrap:anywhere;font-size:14px}
.who{display:block;font-size:11px;font-weight:600;letter-spacing:.04em;text-transform:uppercase;color:#57606a}
.user{background:#e3edfb;margin-right:18%}.before{background:#f1f2f4;margin-left:18%}.after{background:#e3f4e6;margin-left:18%}
.reference{border:1px dashed #c5ccd3;margin-left:18%;color:#444}
.sample{font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;background:#f6f8fa;border-radius:8px;padding:8px 12px;margin:8px 0}
.sample b{color:#17589c}
"""
# A number, share, size or duration, alone or as "a → b" or "a [lo, hi]": aligned right.
NUMERIC = re.compile(
    r"[+\-−]?[\d.,]+(e-?\d+)?[%KMBT]?( (s|min \d+ s|h \d+ min))?( → .*| \[.*\])?|–"
)


def _inline(text: str) -> str:
    """HTML for the report's own sentences: escaped, then `code` and **bold**."""
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)


def _table_html(head: list | None, rows: list) -> str:
    """A table; without a header it is a key-value list (nothing aligned right)."""

    def td(v) -> str:
        right = head is not None and NUMERIC.fullmatch(str(v))
        cls = ' class="n"' if right else ""
        return f"<td{cls}>{html.escape(str(v))}</td>"

    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head or [])
    th = f"<thead><tr>{th}</tr></thead>" if head else ""
    body = "".join("<tr>" + "".join(map(td, row)) + "</tr>" for row in rows)
    table = f"<table{'' if head else ' class=kv'}>{th}<tbody>{body}</tbody></table>"
    return f'<div class="tw">{table}</div>'


def render_html(title: str, meta: str, blocks: list, figures: dict) -> str:
    esc, parts = html.escape, []
    for b in blocks:
        kind = b[0]
        if kind == "h2":
            parts.append(f'<h2 id="{b[1]}">{esc(b[2])}</h2>')
        elif kind == "h3":
            parts.append(f"<h3>{_inline(b[1])}</h3>")
        elif kind == "p":
            parts.append(f"<p>{_inline(b[1])}</p>")
        elif kind in ("note", "callout"):
            parts.append(f'<div class="{kind}">{_inline(b[1])}</div>')
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "cards":
            cards = "".join(
                f'<div class="card"><div class="k">{esc(k)}</div>'
                f'<div class="v">{esc(str(v))}</div><div class="s">{esc(str(s))}</div></div>'
                for k, v, s in b[1]
            )
            parts.append(f'<div class="cards">{cards}</div>')
        elif kind in ("table", "kv"):
            parts.append(_table_html(b[1], b[2]) if kind == "table" else _table_html(None, b[1]))
        elif kind == "img":
            data = base64.b64encode(figures[b[1]]).decode("ascii")
            parts.append(
                f'<figure><img alt="{esc(b[2])}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(b[2])}</figcaption></figure>"
            )
        elif kind == "chat":
            chat = "".join(
                f'<div class="msg {role}"><span class="who">{esc(label)}</span>{esc(text)}</div>'
                for role, label, text in b[1]
            )
            parts.append(f'<div class="chat">{chat}</div>')
        elif kind == "sample":
            parts.append(f'<div class="sample"><b>{esc(b[1])}</b>{esc(b[2])}</div>')
    toc = "".join(f'<a href="#{b[1]}">{esc(b[2])}</a>' for b in blocks if b[0] == "h2")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><main>"
        f'<h1>{esc(title)}</h1><div class="meta">{_inline(meta)}</div><nav>{toc}</nav>\n'
        + "\n".join(parts)
        + "\n</main></body></html>\n"
    )
