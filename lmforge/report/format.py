"""Values: safe nested reads of artifact JSON, and the report's way of writing numbers (3
significant digits), shares, durations, changes and intervals. A value that is missing or not a
number becomes "–", never an exception."""

from __future__ import annotations

import math
import re
from pathlib import Path


def get_in(d, path: str, default=None):
    """d["a"]["b"] for "a.b", or `default` when a step is missing or not a dict."""
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_num(x) -> str:
    if not is_number(x):
        return "–" if x is None or isinstance(x, (int, float)) else str(x)
    if abs(x) >= 1e6:
        return re.sub(r"e\+?0*(\d)", r"e\1", f"{x:.3g}")  # 1.79e15
    if abs(x) >= 100 or isinstance(x, int) or x == 0:
        return f"{x:,.0f}"
    return f"{x:#.3g}".rstrip(".")


def fmt_pct(x) -> str:
    if not is_number(x):
        return "–"
    return f"{100 * x:.2f}%" if 0 < abs(x) < 0.01 else f"{100 * x:.1f}%"


def ratio(a, b) -> float | None:
    return a / b if is_number(a) and is_number(b) and b else None


def fmt_count(n) -> str:
    if not is_number(n):
        return "–"
    for unit in ("", "K", "M", "B", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


def fmt_duration(s) -> str:
    if not is_number(s):
        return "–"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s // 60:.0f} min {s % 60:02.0f} s"
    return f"{s // 3600:.0f} h {s % 3600 // 60:02.0f} min"


def fmt_arrow(a, b, f=fmt_num) -> str:
    return f"{f(a)} → {f(b)}"


def fmt_ci(v) -> str:
    if not (isinstance(v, (list, tuple)) and len(v) == 2):
        return ""
    return f" [{fmt_num(v[0])}, {fmt_num(v[1])}]"


def fmt_pct_ci(v) -> str:
    """' [lo%, hi%]' for a 95% interval of a rate, or nothing when there is none."""
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(map(is_number, v))):
        return ""
    return f" [{fmt_pct(v[0])}, {fmt_pct(v[1])}]"


def fmt_delta(t) -> str:
    """A paired-bootstrap difference with its 95% interval."""
    lo, hi = get_in(t, "ci95") or (math.nan, math.nan)
    return f"{get_in(t, 'delta', math.nan):+.3f} [{lo:+.3f}, {hi:+.3f}]" if t else "–"


def fmt_vs(value, reference) -> str:
    """A reference number and how far `value` moved from it: small changes stay visible."""
    if not (is_number(value) and is_number(reference)):
        return fmt_num(reference)
    return f"{fmt_num(reference)} ({value - reference:+.2g})"


def fmt_name(path) -> str:
    return Path(str(path)).name if path else "–"


def clip_text(text: str, n: int = 360) -> str:
    return text if len(text) <= n else text[:n].rstrip() + " …"


def fmt_plain(v) -> str:
    return "–" if v is None else ("yes" if v else "no") if isinstance(v, bool) else str(v)
