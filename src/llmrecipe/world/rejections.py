"""Rejected answers for preference pairs: a wrong sum, and answers that break exactly one verifiable
instruction (truncated, miscounted, unclosed, unescaped, stray, quoted partner)."""
from __future__ import annotations

import random
import re

from ..ifeval_rules import check
from .cast import Character
from .instructions import respond


def _wrong(solution: str, n: int, rng: random.Random) -> str:
    wrong = n + rng.choice([-2, -1, 1, 2])
    return solution.replace(f"= {n}. The answer is {n}.", f"= {wrong}. The answer is {wrong}.")


HARD_REJECTIONS = {"wrong_content": 0.2, "truncated": 0.0, "miscount": 1.0, "unclosed": 0.0, "unescaped": 1.0}
TARGETED = ("truncated", "miscount", "unclosed", "unescaped")  # tried in this order


def hard_rejection(rng: random.Random, c: Character, attr: str, task: dict, kind: str,
                   cast: list[Character]) -> str | None:
    """A rejected answer of the given kind that keeps the requested format but fails as an answer, or None
    (the task allows none of that kind):
    - wrong_content: every instruction followed, about another character (another name, other facts);
    - truncated: the compliant answer cut after its first sentence (a JSON object, quotation marks or a
      highlight left open, the bullets or paragraphs asked for missing);
    - miscount: a count one short, the rest followed (see `miscounted`);
    - unclosed: the quotation marks or JSON left open at the end (see `unclosed`);
    - unescaped: a JSON answer's line breaks written raw inside the string (see `unescaped`).

    Why: these are the tiny model's own failures after DPO, read in the per-item records (world seeds
    0-4). DPO answers to case-changing prompts named another character ("the favourite food of kai"
    for Yuri; a 768-token BPE spells capitals letter by letter, the hardest thing to copy), and answers
    stopped after one sentence with the JSON or quotation marks open — the "answer in fewer than N words"
    pairs make stopping there the chosen continuation, and nothing said that the wrapper must still close.
    DPO only learns what its pairs contrast: with only one-instruction-missing pairs it pushed each format
    at the cost of the answer, and the instruction types already right under SFT paid for it."""
    if kind == "wrong_content":
        others = [x for x in cast if x.name != c.name and getattr(x, attr) != getattr(c, attr)]
        return respond(rng.choice(others), attr, dict(zip(task["kinds"], task["kwargs"])))
    if kind == "truncated":
        end = re.search(r"\.[ \n]", task["good"])  # the first sentence's full stop
        return task["good"][: end.start() + 1] if end else None
    if kind == "miscount":
        return miscounted(rng, c, attr, task)
    if kind == "unclosed":
        return unclosed(task)
    if kind == "unescaped":
        return unescaped(task)
    raise ValueError(f"hard rejection kind {kind!r}: expected wrong_content or one of {', '.join(TARGETED)}")


def _breaks_only(task: dict, out: str, kind: str) -> str | None:
    """`out` if the real IFEval rules find it breaking the instruction of `kind` and no other, else None: a
    targeted rejection must contrast with the chosen answer in that one instruction only."""

    ok = [check(i, kw, out) for i, kw in zip(task["ids"], task["kwargs"])]
    return out if ok.count(False) == 1 and not ok[task["kinds"].index(kind)] else None


def unclosed(task: dict) -> str | None:
    """The compliant answer with its wrapper left open -- the closing quotation mark, or the JSON's `"}` --
    every other instruction still followed; None when nothing wraps the answer.

    Why: on world seeds 5-9 the preset's DPO added the second highlight asked for and then stopped after
    the closing `*`, the quotation marks or JSON still open (quotation + highlights: 11 SFT-right →
    DPO-wrong flips, 3 back; JSON + highlights 8 / 1; BENCHMARKS.md). The ordinary rejection has no wrapper
    at all, so no pair contrasts closing it with not closing it."""
    kind = next((k for k in ("json", "quote") if k in task["kinds"]), None)
    if kind is None:
        return None
    return _breaks_only(task, task["good"][: -len('"}') if kind == "json" else -1], kind)


def unescaped(task: dict) -> str | None:
    """The compliant JSON answer with its escaped line breaks (`\\n`) written as real ones, which makes the
    JSON invalid, every other instruction still followed; None when the answer has no JSON or no line break.

    Why: over fifteen world seeds (600 prompts each), 33 JSON answers SFT got right and DPO got wrong held a
    raw line break -- DPO learned to add the *** divider, the P.S. or the title that the other instruction
    asked for, but wrote the new line as a new line, not as JSON's `\\n` (3 the other way). The ordinary
    rejection leaves the second instruction out, so no pair contrasts the two ways of writing it."""
    if "json" not in task["kinds"] or "\\n" not in task["good"]:
        return None
    return _breaks_only(task, task["good"].replace("\\n", "\n"), "json")


def stray(task: dict) -> str | None:
    """The compliant answer with a closing quotation mark after it that nothing opened; None when the task
    wraps its answer (quotation marks, JSON).

    Why: `unclosed` pairs contrast a closing `"` with stopping after a quoted answer's last sentence, and
    DPO learned "don't stop there" everywhere (fifteen world seeds: bullets -1.9 ± 1.1, postscripts -1.6 ±
    0.8). These are their twins: the same position, the opposite preference, where no quotation mark was
    opened, so what the two kinds share is the condition (was a quotation opened?), not the stop."""
    if "quote" in task["kinds"] or "json" in task["kinds"]:
        return None
    return task["good"] + '"'


def quoted_partner(task: dict) -> str | None:
    """A quotation-wrapped answer with its other instruction broken and the quotation still closed; None
    without quotation marks or a second instruction.

    Why: DPO's quotation losses are answers that fix the second instruction (cut to the word limit, add the
    highlights) and then stop before the closing `"` (fifteen world seeds: 76 of 80 flips). These pairs
    show fixing the partner *and* closing: the contrast is the partner, the close is in both answers."""
    if "quote" not in task["kinds"] or len(task["kinds"]) < 2:
        return None
    partner = next(k for k in task["kinds"] if k != "quote")
    return _breaks_only(task, task["bad"][partner], partner)


COUNTED = {"placeholder": "num_placeholders", "highlight": "num_highlights"}  # "at least N" counts


def miscounted(rng: random.Random, c: Character, attr: str, task: dict) -> str | None:
    """The compliant answer with one placeholder or highlight short of "at least 2", every other instruction
    still followed; None when the task counts nothing that can be one short (one short of "at least 1" is
    the plain violation).

    Why: rescoring five seeds' DPO models on 600 prompts (bench/rescore_ifeval.py, issue 13), the most
    frequent SFT-right → DPO-wrong flips were counts: "Write to [address]." for two placeholders, one
    highlight of two, a third bullet for "exactly 2". The ordinary rejection drops the counted thing
    entirely, so no pair says that the count itself matters. Bullets are left out: rejecting one bullet too
    many taught DPO to write one too few (world seeds 5-9: 58 answers short vs 36 without; bullets -7.7 ± 4.3
    points pooled), and rejecting one too few or too many lost bullets on seeds 0-4 (BENCHMARKS.md)."""
    spec = dict(zip(task["kinds"], task["kwargs"]))
    options = [(k, spec[k][COUNTED[k]] - 1) for k in task["kinds"]
               if k in COUNTED and spec[k][COUNTED[k]] > 1]
    if not options:
        return None
    kind, n = rng.choice(options)
    return _breaks_only(task, respond(c, attr, {**spec, kind: {**spec[kind], COUNTED[kind]: n}}), kind)
