"""Unicode and whitespace normalisation, the first thing done to every document read.

Unicode NFC (or NFKC, which also folds compatibility characters such as ligatures and full-width
forms) and tidy whitespace (line endings, control and zero-width characters, trailing spaces,
runs of blank lines). Every later step (exact and near dedup, the quality rules) and the output
see the normalised text.
"""

from __future__ import annotations

import re
import unicodedata

from lmforge.data.curate.config import NormalizeConfig

# C0/C1 controls except tab and newline, zero-width characters and the BOM.
_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING_SPACES = re.compile(r"[ \t]+(?=\n)")
_BLANK_RUNS = re.compile(r"\n{3,}")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")


def normalize_text(text: str, cfg: NormalizeConfig) -> str:
    if cfg.unicode != "none":
        text = unicodedata.normalize(cfg.unicode, text)
    if cfg.whitespace == "tidy":
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _INVISIBLE.sub("", text)
        text = _ODD_SPACES.sub(" ", text)
        text = _TRAILING_SPACES.sub("", text)
        text = _BLANK_RUNS.sub("\n\n", text)
        # Leading indentation of the first line is kept: fortunes indent verse and dialogue.
        text = _LEADING_BLANK_LINES.sub("", text).rstrip()
    elif cfg.whitespace == "collapse":
        text = " ".join(_INVISIBLE.sub("", text).split())
    return text
