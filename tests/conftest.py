import os

import pytest
import torch

# Tests run on 2 cores; keep torch from oversubscribing them and never reach for a hub.
torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def tiny_cfg():
    from lmforge.model.config import ModelConfig

    return ModelConfig(
        vocab_size=97,
        n_layer=2,
        n_embd=32,
        n_head=4,
        n_kv_head=2,
        intermediate_size=64,
        max_seq_len=64,
    )


WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no out up into what its time more "
    "dictionary meaning word light water earth river mountain house tree book answer question small large old new"
).split()


def make_corpus(path, n_docs=400, seed=0):
    """A few hundred short 'documents' of English-like text as jsonl (about 60 KB)."""
    import json
    import random

    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(n_docs):
            sentences = []
            for _ in range(rng.randint(1, 6)):
                words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
                sentences.append(" ".join(words).capitalize() + ".")
            f.write(json.dumps({"text": " ".join(sentences), "source": f"s{i % 3}"}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "docs.jsonl")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, tiny_corpus):
    from lmforge.data.vocab import train_tokenizer_from_path

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer_from_path(tiny_corpus, 400, out, progress=False)
    return out


# What each kind of skip needs; a skip whose reason mentions the key gets the hint.
SKIP_HINTS = {
    "Debian": "scripts/setup.sh installs the Debian text packages (wordnet-base dict-gcide "
    "bible-kjv bible-kjv-text fortunes) with apt-get",
    "Chromium": "WITH_BROWSER=1 scripts/setup.sh installs Chromium (apt-get install chromium)",
}


def pytest_terminal_summary(terminalreporter):
    """Every skipped test, grouped by its reason, at the end of the run: under `-q` a skip is a
    lone 's', so a machine without the Debian text packages (or Chromium) would otherwise pass
    the suite having silently left those tests out."""
    by_reason: dict[str, list[str]] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        by_reason.setdefault(reason.removeprefix("Skipped: "), []).append(report.nodeid)
    if not by_reason:
        return
    count = sum(map(len, by_reason.values()))
    terminalreporter.section(f"{count} tests skipped, by reason", sep="-", yellow=True, bold=True)
    for reason, nodeids in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        terminalreporter.write_line(f"{reason} ({len(nodeids)}):", yellow=True)
        by_file: dict[str, list[str]] = {}
        for nodeid in nodeids:
            by_file.setdefault(nodeid.split("::")[0], []).append(nodeid)
        for path, ids in by_file.items():
            if len(ids) > 5:  # a whole module: one line
                terminalreporter.write_line(f"    {path}: {len(ids)} tests")
            else:
                terminalreporter.write_line("".join(f"    {nodeid}\n" for nodeid in ids).rstrip())
        for key, hint in SKIP_HINTS.items():
            if key.lower() in reason.lower():
                terminalreporter.write_line(f"    to run them: {hint}")
