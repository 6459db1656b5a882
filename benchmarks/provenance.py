"""Where a benchmark's numbers came from: the commit measured, and whether lmforge/ had changes
not yet committed (a result from a dirty tree says so)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git_state() -> dict:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "lmforge"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:  # no git: a copy of the tree
        return {}
    return {"commit": head.stdout.strip(), "lmforge_dirty": bool(dirty.stdout.strip())}
