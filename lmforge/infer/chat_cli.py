"""A terminal chat with a causal LM: multi-turn, streamed token by token, a few commands.

The conversation is kept as a message list and every turn is prompted through the training
template (`stream_chat` -> data/chat.py), so the model sees exactly the format it was tuned
on, the same as the HTTP server's chat endpoint. Input and output are parameters so a test
can script a whole session.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

from torch import nn

from lmforge.data.chat import check_chat_tokenizer
from lmforge.infer.generate import GenerationStats, SamplingConfig, stream_chat

HELP = """\
commands:
  /reset         forget the conversation (the system prompt stays)
  /system TEXT   set the system prompt (/system alone shows it)
  /help          this list
  /quit          leave (so do Ctrl-D and Ctrl-C at the prompt)
Ctrl-C while the model answers stops that answer; the turn is then forgotten.
"""


def _write_now(text: str) -> None:
    # stdout is line-buffered on a terminal: flush, or a streamed answer appears all at once
    sys.stdout.write(text)
    sys.stdout.flush()


def repl(
    model: nn.Module,
    tokenizer,
    sampling: SamplingConfig,
    system: str | None = None,
    input_fn: Callable[[str], str] = input,
    write: Callable[[str], object] = _write_now,
) -> None:
    """Chat until /quit or end of input. `input_fn(prompt)` reads a line (EOFError ends);
    `write(text)` shows text as it comes."""
    check_chat_tokenizer(tokenizer)
    if input_fn is input:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    write("chat with the model; /help lists commands, /quit or Ctrl-D leaves\n")
    history: list[dict] = []  # user and assistant turns; the system prompt is added per turn
    while True:
        try:
            line = input_fn("you> ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, arg = text.partition(" ")
            arg = arg.strip()
            if command in ("/quit", "/exit"):
                return
            if command == "/reset":
                history.clear()
                write("(conversation forgotten)\n")
            elif command == "/system":
                if arg:
                    system = arg
                    write("(system prompt set)\n")
                else:
                    write(f"(system prompt: {system!r})\n")
            elif command == "/help":
                write(HELP)
            else:
                write(f"unknown command {command}; /help lists the commands\n")
            continue

        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        write("assistant> ")
        pieces, stats = [], GenerationStats()
        try:
            for piece in stream_chat(model, tokenizer, messages, sampling, stats):
                pieces.append(piece)
                write(piece)
        except KeyboardInterrupt:
            # a half answer would steer the next turns; drop the whole exchange instead
            history.pop()
            write("\n(stopped; this turn is forgotten)\n")
            continue
        write("\n")
        if stats.prompt_truncated:
            write(
                "(the conversation is longer than the model's context: its oldest turns were "
                "left out of the prompt; /reset starts afresh)\n"
            )
        history.append({"role": "assistant", "content": "".join(pieces)})
