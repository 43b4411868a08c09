"""Chat (SFT) data, in the formats people have (each row is recognised by its columns):

- `messages` = [{role, content}, ...]: ultrachat_200k, OpenAI's fine-tuning files, TRL's conversational;
- `conversations` = [{from, value}, ...] with from = human/gpt/system: ShareGPT;
- `instruction`, `input` (optional), `output`: Alpaca;
- `prompt` and `completion` (strings, or message lists): TRL's prompt-completion.

Bad rows are skipped and counted (the first few named), or rejected with `strict`. Conversations are
tokenized through the one chat template; every assistant turn is trained on.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..chat import IGNORE, ROLES, Encoded, encode_chat
from ..model import Prefix
from ..tokenizer import Tokenizer
from .sources import DataError, Row, iter_rows


@dataclass
class LoadReport:
    rows: int = 0
    kept: int = 0
    skipped: int = 0
    examples: list[str] = field(default_factory=list)  # "file, row N: why" for the first few
    truncated: int = 0
    dropped_after_truncation: int = 0
    source: str = ""  # the data as given (a hub id, files, globs)
    formats: dict[str, int] = field(default_factory=dict)  # rows read per recognised format

    def skip(self, why: str, strict: bool) -> None:
        if strict:
            raise DataError(why)
        self.skipped += 1
        if len(self.examples) < 5:
            self.examples.append(why)

    def __str__(self) -> str:
        s = f"{self.rows:,} rows: {self.kept:,} kept, {self.skipped:,} skipped"
        if self.examples:
            s += " (" + "; ".join(self.examples) + ")"
        if self.truncated:
            s += f"; {self.truncated:,} truncated to the context"
        if self.dropped_after_truncation:
            s += f", {self.dropped_after_truncation:,} dropped (no response left after truncation)"
        return s


def check_messages(row: Row, field_name: str = "messages") -> tuple[list[dict] | None, str]:
    """(messages, "") for a valid conversation, else (None, the reason naming file/row/field)."""
    msgs = row.data.get(field_name)
    if msgs is None:
        return None, f"{row.where()}: no {field_name!r} field"
    if not isinstance(msgs, list) or not msgs:
        return None, f"{row.where(field_name)}: expected a non-empty list of messages"
    out = []
    for i, m in enumerate(msgs):
        if (not isinstance(m, dict) or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)):
            return None, f"{row.where(field_name)}[{i}]: expected {{'role': str, 'content': str}}"
        if m["role"] not in ROLES:
            return None, f"{row.where(field_name)}[{i}]: unknown role {m['role']!r}"
        if m["role"] == "assistant" and not m["content"].strip():
            return None, f"{row.where(field_name)}[{i}]: empty assistant turn"
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        return None, f"{row.where(field_name)}: no assistant turn"
    return out, ""


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "model": "assistant", "system": "system"}
CHAT_FORMATS = ("messages [{role, content}] (ultrachat, OpenAI), conversations [{from, value}] (ShareGPT), "
                "instruction/input/output (Alpaca), or prompt/completion (TRL)")


def _as_messages(value, role: str) -> list[dict] | None:
    """A string as one message of `role`, a list of messages as it is (None: neither)."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return value if isinstance(value, list) else None


def conversation(row: Row) -> tuple[list[dict] | None, str, str]:
    """(messages, "", format) for a row of any format above, else (None, why naming file/row/columns, "")."""
    d = row.data
    if "messages" in d:
        msgs, why = check_messages(row)
        return msgs, why, "messages"
    if "conversations" in d:
        turns = d["conversations"]
        if not isinstance(turns, list) or not turns:
            return None, f"{row.where('conversations')}: expected a non-empty list of turns", ""
        msgs = []
        for i, t in enumerate(turns):
            who = t.get("from") if isinstance(t, dict) else None
            if who not in SHAREGPT_ROLES or not isinstance(t.get("value"), str):
                return None, (f"{row.where('conversations')}[{i}]: expected {{'from': human|gpt|system, "
                              f"'value': str}}, got {t!r:.80}"), ""
            msgs.append({"role": SHAREGPT_ROLES[who], "content": t["value"]})
        msgs, why = check_messages(Row(row.source, row.index, {"conversations": msgs}), "conversations")
        return msgs, why, "sharegpt"
    if "instruction" in d and "output" in d:
        if not all(isinstance(d.get(k, ""), str) for k in ("instruction", "input", "output")):
            return None, f"{row.where()}: Alpaca's instruction, input and output must be strings", ""
        user = d["instruction"] + (f"\n\n{d['input']}" if d.get("input", "").strip() else "")
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": d["output"]}]
        msgs, why = check_messages(Row(row.source, row.index, {"alpaca": msgs}), "alpaca")
        return msgs, why, "alpaca"
    if "prompt" in d and "completion" in d:
        prompt, reply = _as_messages(d["prompt"], "user"), _as_messages(d["completion"], "assistant")
        if prompt is None or reply is None:
            return None, f"{row.where()}: TRL's prompt and completion must be strings or message lists", ""
        msgs, why = check_messages(Row(row.source, row.index, {"prompt+completion": prompt + reply}),
                                   "prompt+completion")
        return msgs, why, "prompt_completion"
    columns = ", ".join(map(str, d)) or "none"
    return None, f"{row.where()}: no conversation (columns: {columns}); expected {CHAT_FORMATS}", ""


def load_chat(spec: str | list[str], tok: Tokenizer, max_len: int, split: str = "train_sft",
              strict: bool = False, limit: int | None = None) -> tuple[list[Encoded], LoadReport]:
    """Tokenized conversations, each cut to `max_len` + 1 tokens (inputs and shifted targets)."""
    rep, out = LoadReport(source=str(spec)), []
    for row in iter_rows(spec, split):
        if limit is not None and rep.rows >= limit:
            break
        rep.rows += 1
        msgs, why, fmt = conversation(row)
        if msgs is None:
            rep.skip(why, strict)
            continue
        rep.formats[fmt] = rep.formats.get(fmt, 0) + 1
        enc = encode_chat(msgs, tok)
        if len(enc.ids) > max_len + 1:
            rep.truncated += 1
            enc = Encoded(enc.ids[: max_len + 1], enc.labels[: max_len + 1])
            if all(lab == IGNORE for lab in enc.labels[1:]):
                rep.dropped_after_truncation += 1
                continue
        rep.kept += 1
        out.append(enc)
    if not out:
        raise DataError(f"{spec}: no usable conversations in {rep.rows:,} rows; the first: {rep.examples[0]}"
                        if rep.examples else f"{spec}: no usable conversations ({rep})")
    return out, rep


def pack(examples: list[Encoded], max_len: int) -> list[Encoded]:
    """Concatenate consecutive short examples into sequences of at most `max_len` + 1 tokens.

    Fewer pad tokens per batch; as in TRL's packing, attention is not reset between packed examples.
    Every example already ends with an EOT, so examples stay separated in the text.
    """
    packed: list[Encoded] = []
    ids: list[int] = []
    labels: list[int] = []
    for e in examples:
        if ids and len(ids) + len(e.ids) > max_len + 1:
            packed.append(Encoded(ids, labels))
            ids, labels = [], []
        ids, labels = ids + e.ids, labels + e.labels
    if ids:
        packed.append(Encoded(ids, labels))
    return packed


def collate(examples: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (x, y): x = ids[:-1], y = labels[1:], padding ignored in the loss.

    Right padding needs no attention mask: causal attention never lets a real token see a later pad.
    """
    T = max(len(e.ids) for e in examples) - 1
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.ids) - 1
        x[i, :n] = torch.tensor(e.ids[:-1])
        y[i, :n] = torch.tensor(e.labels[1:])
    return x, y


def prompt_reply(prompt: list[int], reply: list[int]) -> Encoded:
    """A prompt then its reply as one sequence, only the reply trained on (DPO's and RL's rows, unshared)."""
    return Encoded(prompt + reply, [IGNORE] * len(prompt) + reply)


def collate_packed(examples: list[Encoded], pad_id: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`collate`'s examples packed into as few rows as the longest of them is wide: (x, y, positions,
    segments) for `model(x, y, select=..., positions=..., segments=...)`, the same logits at every target as
    `collate`'s rows (to fp32 rounding), without their pad tokens.

    Unlike `pack` (TRL's packing, which changes what attends to what) nothing is approximated: each example
    keeps positions 0..n-1 and its own causal attention (model.hidden's `segments`). Rows are filled
    first-fit, longest first. On the tiny recipe's SFT data 41% of a right-padded batch is padding.
    """
    W = max(len(e.ids) for e in examples) - 1
    rows: list[list[int]] = []  # example indices per row
    free: list[int] = []
    for i in sorted(range(len(examples)), key=lambda i: -len(examples[i].ids)):
        n = len(examples[i].ids) - 1
        r = next((r for r, f in enumerate(free) if f >= n), None)
        if r is None:
            rows.append([])
            free.append(W)
            r = len(rows) - 1
        rows[r].append(i)
        free[r] -= n
    x = torch.full((len(rows), W), pad_id, dtype=torch.long)
    y = torch.full((len(rows), W), IGNORE, dtype=torch.long)
    positions = torch.zeros(len(rows), W, dtype=torch.long)
    segments = torch.full((len(rows), W), -1, dtype=torch.long)  # trailing pads: a segment of their own
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            e, n = examples[i], len(examples[i].ids) - 1
            x[r, at: at + n] = torch.tensor(e.ids[:-1])
            y[r, at: at + n] = torch.tensor(e.labels[1:])
            positions[r, at: at + n] = torch.arange(n)
            segments[r, at: at + n] = i
            at += n
    return x, y, positions, segments


def collate_shared(prompts: list[list[int]], replies: list[tuple[int, list[int]]], pad_id: int
                   ) -> tuple[torch.Tensor, torch.Tensor, Prefix]:
    """Replies that continue shared prompts, for `model(x, select=y != IGNORE, prefix=p)` (model.Prefix):
    the same targets and logits as `collate` of each prompt + reply, with each prompt computed once.

    `replies` are (prompt index, reply tokens); every reply token is a target. A prompt's last token
    predicts its reply's first, so it opens each reply's row (x = [prompt[-1]] + reply[:-1], y = reply) and
    the prefix row holds the rest, right-padded.
    """
    W = max(1, max(len(p) - 1 for p in prompts))
    idx = torch.full((len(prompts), W), pad_id, dtype=torch.long)
    key_mask = torch.zeros(len(prompts), W, dtype=torch.long)
    for i, p in enumerate(prompts):
        idx[i, : len(p) - 1] = torch.tensor(p[:-1], dtype=torch.long)
        key_mask[i, : len(p) - 1] = 1
    T = max(len(r) for _, r in replies)
    x = torch.full((len(replies), T), pad_id, dtype=torch.long)
    y = torch.full((len(replies), T), IGNORE, dtype=torch.long)
    for i, (owner, r) in enumerate(replies):
        x[i, : len(r)] = torch.tensor(prompts[owner][-1:] + r[:-1])
        y[i, : len(r)] = torch.tensor(r)
    owner = torch.tensor([o for o, _ in replies], dtype=torch.long)
    return x, y, Prefix(idx, key_mask, owner)


def expand_shared(x: torch.Tensor, y: torch.Tensor, prefix: Prefix) -> list[Encoded]:
    """`collate_shared`'s inverse: each reply row as one sequence, its whole prompt then the reply (what a
    test or a benchmark compares the shared forward with)."""
    out = []
    for r in range(x.size(0)):
        q = int(prefix.owner[r])
        ask = prefix.idx[q][prefix.key_mask[q].bool()].tolist() + [int(x[r, 0])]
        out.append(prompt_reply(ask, y[r][y[r] != IGNORE].tolist()))
    return out
