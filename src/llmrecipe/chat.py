"""The ONE chat template, used by SFT, DPO, chat, serving and evaluation alike.

    <|system|>\\n{content}<EOT><|user|>\\n{content}<EOT><|assistant|>\\n{content}<EOT>...

Role markers are plain text, tokenized by the model's own BPE (`<|user|>` is a few GPT-2 tokens), and the
end of every turn is the tokenizer's existing `<|endoftext|>` token. Nothing is added to the vocabulary,
so the embedding matrix never grows and an adapter-only file stays a few MB; the model already knows EOT
as "stop" from pre-training. Each segment is tokenized on its own, so the template's token boundaries are
identical at training and inference time and response spans are exact.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Callable

from .tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")
IGNORE = -100


def marker(role: str) -> str:
    return f"<|{role}|>\n"


def content(message: dict) -> str:
    """A turn's text as the template writes it: leading whitespace dropped. We tokenize the marker and the
    content separately; a tokenizer that reads the rendered string whole (HF's `apply_chat_template` on the
    exported template) would merge leading spaces or newlines with the marker's "\n" into other tokens.
    Without them both give the same ids, token for token (tests/test_export.py)."""
    return message["content"].lstrip()


@dataclass
class Encoded:
    ids: list[int]
    labels: list[int]  # = ids on assistant content + its EOT, IGNORE elsewhere

    @property
    def response_spans(self) -> list[tuple[int, int]]:
        """[start, end) of each trained span (assistant content + EOT)."""
        spans, start = [], None
        for i, lab in enumerate(self.labels + [IGNORE]):
            if lab != IGNORE and start is None:
                start = i
            elif lab == IGNORE and start is not None:
                spans.append((start, i))
                start = None
        return spans


def encode_chat(messages: list[dict], tok: Tokenizer, add_generation_prompt: bool = False) -> Encoded:
    """Token ids and labels for a conversation; with `add_generation_prompt`, ends with the assistant
    marker."""
    ids: list[int] = []
    labels: list[int] = []
    for m in messages:
        role = m["role"]
        if role not in ROLES:
            raise ValueError(f"unknown chat role {role!r} (expected one of {', '.join(ROLES)})")
        head = tok.encode(marker(role))
        body = tok.encode(content(m)) + [tok.eot_id]
        ids += head + body
        labels += [IGNORE] * len(head) + (body if role == "assistant" else [IGNORE] * len(body))
    if add_generation_prompt:
        head = tok.encode(marker("assistant"))
        ids += head
        labels += [IGNORE] * len(head)
    return Encoded(ids, labels)


def render(messages: list[dict], add_generation_prompt: bool = False, eot: str = "<|endoftext|>") -> str:
    """The template as text (for display and for external tools)."""
    text = "".join(f"{marker(m['role'])}{content(m)}{eot}" for m in messages)
    return text + (marker("assistant") if add_generation_prompt else "")


def chat_loop(reply: Callable[[list[dict]], str], system: str | None, banner: str) -> None:
    """The terminal chat: read a turn, `reply(history)` answers it (it may drop old turns from `history`)."""
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    print(f"{banner}: empty line or Ctrl-D to quit, /reset to clear the history")
    while True:
        try:
            user = input("you> ").strip()
        except EOFError:
            break
        if not user:
            break
        if user == "/reset":
            history = history[:1] if system else []
            continue
        history.append({"role": "user", "content": user})
        try:
            answer = reply(history)
        except ValueError as e:  # a message longer than the context: said, and the chat goes on
            print(f"error: {e}")
            history.pop()
            continue
        print(f"assistant> {answer}")
        history.append({"role": "assistant", "content": answer})


def chat_repl(model, tok: Tokenizer, rt, system: str | None, sampling: dict) -> None:
    """Chat with a local model: the history is re-encoded through the template each turn (oldest turns dropped
    to fit)."""
    import sys

    from .engine import Engine, default_new_tokens, fit_new_tokens

    engine = Engine(model, tok, rt, batch_size=1)  # the one sampling path
    block = model.config.block_size
    requested = sampling.get("max_new_tokens") or default_new_tokens(block)
    room = min(requested, default_new_tokens(block))  # what the oldest turns are dropped to leave free

    def reply(history: list[dict]) -> str:
        ids = encode_chat(history, tok, add_generation_prompt=True).ids
        while len(ids) > block - room and len(history) > (2 if system else 1):
            history.pop(1 if system else 0)  # the oldest turn goes; the prompt itself is never cut
            ids = encode_chat(history, tok, add_generation_prompt=True).ids
        budget, note = fit_new_tokens(len(ids), requested, block)
        if note:
            print(note, file=sys.stderr)
        seed = sampling.get("seed")
        seed = secrets.randbelow(2**62) if seed is None else seed  # a fresh draw per reply unless seeded
        out = engine.generate([ids], budget, sampling["temperature"], sampling.get("top_k"),
                              sampling.get("top_p"), seed=seed)
        return tok.decode(out[0])

    chat_loop(reply, system, "chat")
