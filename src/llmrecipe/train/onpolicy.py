"""Between SFT and DPO: on-policy rejections, verified by rules.

For each preference row that says how an answer is checked — IFEval's `instruction_id_list` and `kwargs`,
and optionally `must_state`, a sentence the answer must contain (ignoring case and punctuation) — sample
`samples` answers from the SFT model; the first that fails a check replaces the row's rejected answer. The
chosen answer stays. Rows without checks, and rows whose samples all pass, keep their rejected answer.

Why: a rejected answer written by the data set teaches DPO only the contrast it contains (one instruction
missing, one added), and the policy is free to drift everywhere else; on the tiny world DPO then traded
instruction types (BENCHMARKS.md, issue 13): it lost some the SFT model already followed. A rejection
sampled from the SFT model is a mistake that model actually makes, at the length and in the words it
writes, so the DPO gradient lands where the model is wrong — the on-policy preference data of Tulu 3
(Lambert et al. 2024), labelled here by the verifiable checks instead of a judge.
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..chat import encode_chat
from ..checkpoint import load_model
from ..config import validate
from ..data.sources import DataError, iter_rows
from ..engine import Engine
from ..ifeval_rules import RULES, check
from ..files import atomic_write_text
from ..runtime import setup


@dataclass
class OnPolicyConfig:
    samples: int = 0  # answers sampled per checkable prompt; 0: off (the pairs are used as they are)
    temperature: float = 1.0  # the model's own distribution: its typical mistakes, not only its greedy one
    max_new_tokens: int = 96  # budget of each sampled answer
    batch_size: int = 64  # prompts sampled per batch
    seed: int = 0  # sampling seed
    model: str = ""  # the SFT folder (its adapter chain is merged)
    data: str = ""  # the preference pairs (ultrafeedback_binarized's schema, with the checks above)
    device: str = "auto"  # auto / cuda / cpu


def _words(text: str) -> str:
    # a JSON-escaped newline ("<<title>>\\nWren is ...") would otherwise glue "n" onto the next word
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.replace("\\n", " ").lower()).split())


def states(answer: str, sentence: str) -> bool:
    """Whether `answer` contains `sentence`, ignoring case, punctuation and markup ("*WREN IS A FOX.*",
    '{"answer": "wren is a fox."}' and "Wren is a fox." all state "Wren is a fox.")."""
    return f" {_words(sentence)} " in f" {_words(answer)} "


def failed_checks(row: dict, answer: str) -> list[str]:
    """The checks `answer` fails: IFEval instruction ids, and "must_state" when the fact is missing."""
    out = [i for i, kw in zip(row["instruction_id_list"], row["kwargs"]) if not check(i, kw, answer)]
    if row.get("must_state") and not states(answer, row["must_state"]):
        out.append("must_state")
    return out


def _checkable(row, where) -> bool:
    d = row.data
    if "instruction_id_list" not in d:
        return False
    ids, kwargs = d["instruction_id_list"], d.get("kwargs")
    if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs):
        raise DataError(f"{where('kwargs')}: expected 'instruction_id_list' and 'kwargs': equal-length lists")
    unknown = [i for i in ids if i not in RULES]
    if unknown:
        raise DataError(f"{where('instruction_id_list')}: unknown instruction {unknown[0]!r}")
    chosen = d.get("chosen")
    if (not isinstance(chosen, list) or len(chosen) < 2
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in chosen)
            or chosen[-1].get("role") != "assistant"):
        raise DataError(f"{where('chosen')}: expected the conversation as a list of {{'role', 'content'}} "
                        "messages ending with the assistant's answer")
    for iid, kw in zip(ids, kwargs):  # a check that cannot run on its own kwargs fails here, not mid-sampling
        try:
            check(iid, kw, "a probe answer")
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise DataError(f"{where('kwargs')}: the arguments of {iid!r} do not fit it ({kw!r}: {e})"
                            ) from None
    return True


@torch.no_grad()
def onpolicy_pairs(cfg: OnPolicyConfig, out: str | Path) -> dict:
    """Write `out/preferences.jsonl` (the rows of `cfg.data`, rejections replaced where a sample failed)
    and return counts: rows, checkable, replaced, and the SFT samples' failure rate per check."""
    validate(cfg)
    rows = list(iter_rows(cfg.data))
    checkable = [i for i, r in enumerate(rows) if _checkable(r, r.where)]
    if not checkable:
        raise DataError(f"{cfg.data}: no row carries 'instruction_id_list' checks to sample against")
    rt = setup(cfg.device, "float32")
    model, tok = load_model(cfg.model, rt.device, merge_adapters=True)
    engine = Engine(model.eval(), tok, rt, batch_size=cfg.batch_size)
    prompts = []
    for i in checkable:
        msgs = rows[i].data["chosen"][:-1]
        prompts += [encode_chat(msgs, tok, add_generation_prompt=True).ids] * cfg.samples
    seed = random.Random(f"onpolicy:{cfg.seed}").getrandbits(62)
    outs = engine.generate(prompts, cfg.max_new_tokens, temperature=cfg.temperature, seed=seed)
    texts = [tok.decode(o) for o in outs]
    data = [dict(r.data) for r in rows]
    tried, failed = Counter(), Counter()
    replaced = 0
    for n, i in enumerate(checkable):
        row = data[i]
        first = None
        for answer in texts[n * cfg.samples:(n + 1) * cfg.samples]:
            bad = failed_checks(row, answer)
            for c in [*row["instruction_id_list"], *(["must_state"] if row.get("must_state") else [])]:
                tried[c] += 1
                failed[c] += c in bad
            if bad and first is None and answer.strip():
                first = answer
        if first is not None:
            row["rejected"] = [*row["chosen"][:-1], {"role": "assistant", "content": first}]
            row["rejected_source"] = "sft_sample"  # for the reader of the file: which rejections are sampled
            replaced += 1
    atomic_write_text(Path(out) / "preferences.jsonl", "".join(json.dumps(r) + "\n" for r in data))
    summary = {"rows": len(rows), "checkable": len(checkable), "replaced": replaced,
               "sample_failure_rate": {c: round(failed[c] / tried[c], 3) for c in sorted(tried)}}
    print(f"on-policy rejections: {replaced:,} of {len(checkable):,} checkable rows ({len(rows):,} in all) "
          f"replaced by a failing sample of {cfg.samples}")
    return summary
