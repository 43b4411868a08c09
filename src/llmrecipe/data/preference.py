"""Preference pairs for DPO, from the common formats:

- ultrafeedback_binarized (HuggingFaceH4): `prompt`, `chosen` and `rejected` as message lists ending with
  the assistant's answer (plus `score_chosen`, `score_rejected`);
- Anthropic HH-RLHF: `chosen` and `rejected` as whole transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...")
  sharing a prefix; the prompt is everything before the final assistant turn;
- flat pairs: `prompt`, `chosen`, `rejected` as plain strings (trl-lib's flattened exports);
- TRL's conversational pairs: `prompt` a message list, `chosen` and `rejected` the assistant's replies.

Each pair becomes (prompt messages, chosen reply, rejected reply), tokenized through the chat template.
Pairs with identical replies, or whose prompt alone fills the context, are dropped and counted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..chat import encode_chat
from ..model import Prefix
from ..tokenizer import Tokenizer
from .chat import LoadReport, check_messages, collate, collate_shared, prompt_reply
from .sources import DataError, Row, iter_rows

_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


@dataclass
class Pair:
    prompt: list[dict]
    chosen: str
    rejected: str


@dataclass
class EncodedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]  # reply tokens + EOT
    rejected_ids: list[int]


def parse_hh(transcript: str) -> list[dict]:
    parts = _HH_TURN.split("\n\n" + transcript.lstrip("\n"))
    if len(parts) < 3 or parts[0].strip():
        raise ValueError("not an HH transcript ('\\n\\nHuman: ...\\n\\nAssistant: ...')")
    return [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
            for who, text in zip(parts[1::2], parts[2::2])]


def _split_last_reply(msgs: list[dict], row: Row, field: str) -> tuple[list[dict], str]:
    if msgs[-1]["role"] != "assistant":
        raise ValueError(f"{row.where(field)}: the last message must be the assistant's reply")
    return msgs[:-1], msgs[-1]["content"]


def to_pair(row: Row) -> Pair:
    """A Pair from either format; ValueError (naming file/row/field) for a malformed row."""
    d = row.data
    for f in ("chosen", "rejected"):
        if f not in d:
            raise ValueError(f"{row.where()}: no {f!r} field")
    if (isinstance(d["chosen"], str) and isinstance(d.get("prompt"), str)
            and not d["chosen"].lstrip("\n").startswith("Human: ")):
        # flat pairs (prompt, chosen, rejected as strings), as trl-lib's exports
        if not isinstance(d["rejected"], str):
            raise ValueError(f"{row.where('rejected')}: expected a string like 'chosen'")
        return Pair([{"role": "user", "content": d["prompt"]}], d["chosen"], d["rejected"])
    if isinstance(d["chosen"], str):  # HH: whole transcripts
        try:
            chosen, rejected = parse_hh(d["chosen"]), parse_hh(d["rejected"])
        except ValueError as e:
            raise ValueError(f"{row.where('chosen')}: {e}") from None
        if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            raise ValueError(f"{row.where()}: transcripts must end with an Assistant turn")
        if chosen[:-1] != rejected[:-1]:
            raise ValueError(f"{row.where()}: chosen and rejected do not share the same prompt")
        return Pair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"])
    both = isinstance(d["chosen"], list) and isinstance(d["rejected"], list)
    replies = d["chosen"] + d["rejected"] if both else None
    if (isinstance(d.get("prompt"), list) and replies
            and all(isinstance(m, dict) and m.get("role") == "assistant" for m in replies)):
        # TRL's conversational pairs with an explicit prompt: the replies alone in chosen and rejected
        row = Row(row.source, row.index, {"chosen": d["prompt"] + d["chosen"],
                                          "rejected": d["prompt"] + d["rejected"]})
    c_msgs, why = check_messages(row, "chosen")
    r_msgs, why_r = check_messages(row, "rejected")
    if c_msgs is None or r_msgs is None:
        raise ValueError(why or why_r)
    prompt, chosen = _split_last_reply(c_msgs, row, "chosen")
    prompt_r, rejected = _split_last_reply(r_msgs, row, "rejected")
    if prompt != prompt_r:
        raise ValueError(f"{row.where()}: chosen and rejected do not share the same prompt")
    return Pair(prompt, chosen, rejected)


def load_pairs(spec: str | list[str], tok: Tokenizer, max_len: int, split: str = "train_prefs",
               strict: bool = False, limit: int | None = None) -> tuple[list[EncodedPair], LoadReport]:
    rep, out = LoadReport(source=str(spec)), []
    identical = too_long = 0
    for row in iter_rows(spec, split):
        if limit is not None and rep.rows >= limit:
            break
        rep.rows += 1
        try:
            pair = to_pair(row)
        except ValueError as e:
            rep.skip(str(e), strict)
            continue
        if pair.chosen.strip() == pair.rejected.strip():
            identical += 1
            continue
        prompt_ids = encode_chat(pair.prompt, tok, add_generation_prompt=True).ids
        if len(prompt_ids) >= max_len:
            too_long += 1
            continue
        room = max_len + 1 - len(prompt_ids)
        replies = [tok.encode(r) + [tok.eot_id] for r in (pair.chosen, pair.rejected)]
        if any(len(r) > room for r in replies):
            rep.truncated += 1
        out.append(EncodedPair(prompt_ids, replies[0][:room], replies[1][:room]))
        rep.kept += 1
    rep.examples.append(f"dropped {identical} identical pairs and {too_long} whose prompt fills the context")
    if not out:
        raise DataError(f"{spec}: no usable preference pairs ({rep})")
    return out, rep


def collate_pairs(pairs: list[EncodedPair], pad_id: int, shared: bool | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, Prefix | None]:
    """(x, y, prefix) of 2B reply rows, chosen first then rejected (one forward for both); y is the replies'
    tokens. Each pair's prompt is computed once for its two replies (data.chat.collate_shared) when that
    computes fewer positions than each reply's row holding its prompt (then prefix is None). Shared, prompts
    are padded to the longest prompt and replies to the longest reply, so a batch where one pair's prompt
    and another's reply both nearly fill the context costs more (ultrafeedback at 256 tokens: 1.7x the
    time); the tiny world's pairs, prompts and replies alike short, need 64% of the positions computed
    shared and 43% whole (bench/bench_batches.py). `shared` True/False forces a layout."""
    prompts = [p.prompt_ids for p in pairs]
    replies = ([(i, p.chosen_ids) for i, p in enumerate(pairs)] +
               [(i, p.rejected_ids) for i, p in enumerate(pairs)])
    if shared is None:  # positions each layout computes
        once = len(pairs) * max(len(p) - 1 for p in prompts) + len(replies) * max(len(r) for _, r in replies)
        shared = once < len(replies) * (max(len(prompts[i]) + len(r) for i, r in replies) - 1)
    if shared:
        return collate_shared(prompts, replies, pad_id)
    return (*collate([prompt_reply(prompts[i], r) for i, r in replies], pad_id), None)
