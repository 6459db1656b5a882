#!/usr/bin/env bash
# Set up lmforge on a fresh Debian/Ubuntu machine: system packages, a venv, torch, lmforge.
# Idempotent: a second run only checks. Used by `make demo`, `make test` and .ci/run.
#
#   VENV=.venv         where the virtual environment goes
#   PYTHON=python3     the interpreter that creates it (3.10+)
#   TORCH_INDEX=...    an extra pip index for torch (e.g. PyTorch's CPU-only wheel index on a
#                      machine without a GPU, to avoid the multi-GB CUDA build)
#   WITH_BROWSER=1     also install Chromium (for the web-page tests)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0

# 1. System packages: the Debian text corpora the embedded default corpus is built from.
APT_PACKAGES="wordnet-base dict-gcide bible-kjv bible-kjv-text fortunes"
# Chromium drives the web chat's browser test (tests/test_serve.py; it skips without it)
if [ "${WITH_BROWSER:-0}" = 1 ]; then
  APT_PACKAGES="$APT_PACKAGES chromium"
fi
missing=""
for pkg in $APT_PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "[setup] installing Debian packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  else
    # Not fatal (lmforge runs on your own text), but say what is lost: the tests that read
    # these packages skip, and pytest lists them under "tests skipped, by reason" at the end.
    echo "[setup] WARNING: not a Debian/Ubuntu machine (no apt-get); missing packages:$missing" >&2
    echo "[setup]   install their equivalents, or point lmforge at your own text (data.path=...):" >&2
    echo "[setup]   the embedded default corpus ('lmforge data build', 'lmforge demo') needs them." >&2
    case "$missing" in *wordnet-base*)
      echo "[setup]   These tests will SKIP: tests/test_instructions.py (all)," >&2
      echo "[setup]     tests/test_corpora.py::test_real_debian_corpus_builds_with_every_source" >&2 ;;
    *dict-gcide*|*bible-kjv*|*fortunes*)
      echo "[setup]   test_real_debian_corpus_builds_with_every_source (tests/test_corpora.py) will FAIL" >&2 ;;
    esac
    case "$missing" in *chromium*)
      echo "[setup]   These tests will SKIP without Chromium: the web chat (tests/test_serve.py)," >&2
      echo "[setup]     the report's rendering (tests/test_report.py, tests/test_demo.py)" >&2 ;;
    esac
  fi
fi

# 2. A virtual environment with torch pinned (an unpinned torch pulls a multi-GB CUDA build).
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    echo "[setup] $PYTHON -m venv failed; installing python3-venv" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
  fi
fi
PIP="$VENV/bin/python -m pip"
stamp="$VENV/.lmforge-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    echo "[setup] installing torch==$TORCH_VERSION"
    $PIP install -q ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} "torch==$TORCH_VERSION"
  fi
  echo "[setup] installing lmforge and its dependencies"
  $PIP install -q -e ".[dev]"
  touch "$stamp"
fi
echo "[setup] ready: $VENV/bin/lmforge ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
