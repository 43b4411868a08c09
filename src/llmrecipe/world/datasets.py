"""The world's data sets and their writers: SFT conversations, preference pairs, the RL problems and
the held-out eval analogs in the real suites' schemas (MMLU-Pro, GSM8K, IFEval)."""
from __future__ import annotations

import json
import random
from pathlib import Path

from ..files import atomic_write_text
from .cast import Character, characters
from .instructions import (ATTRIBUTES, INSTRUCTION_TYPES, _fact_answer, instruction_task, mc_item, mc_prompt,
                           mc_reply, problem_turn, unasked, word_problem)
from .rejections import (HARD_REJECTIONS, TARGETED, _wrong, hard_rejection, quoted_partner, stray, unclosed,
                         unescaped)


def _held_out(key: str, seed: int, share: float = 0.2) -> bool:
    """A stable split of (task) keys into training and evaluation."""
    return random.Random(f"{seed}:{key}").random() < share


def _instruction_pair(rng: random.Random, c: Character, attr: str, seed: int, unasked_share: float = 0.0,
                      hard: dict[str, float] | None = None, cast: list[Character] | None = None
                      ) -> tuple[str, str, str, dict] | None:
    """(prompt, compliant answer, an answer that violates one instruction, the task) for a training prompt,
    or None (a contradictory combination, or a held-out prompt). With probability `unasked_share` the second
    answer follows every instruction but adds a format that was not asked for; `hard` gives the shares of the
    rejections in `hard_rejection` (drawn first; the SFT data's imperfect answers use none)."""
    t = instruction_task(rng, c, attr)
    if t is None or _held_out(t["prompt"], seed):
        return None
    hard = hard or {}
    if hard and rng.random() < hard.get("wrong_content", 0.0):  # (the SFT data passes none and draws nothing)
        return t["prompt"], t["good"], hard_rejection(rng, c, attr, t, "wrong_content", cast or []), t
    # The ordinary rejection is drawn from the main stream whatever the targeted kinds' shares say, and a
    # targeted kind then replaces it, decided and made on streams of its own (seeded by the prompt). So a
    # share given to one changes exactly the rejections it makes, and every other pair stays byte-identical.
    # Why: when a hard kind returned early here, it skipped the main stream's draws and the variant resampled
    # the whole data set (world seed 5, unclosed 0.8: 1,569 of 1,600 pairs differed where ~120 were
    # targeted): every data variant compared before this fix changed more than its name said.
    if rng.random() < unasked_share and (extra := unasked(rng, c, attr, t)) is not None:
        bad = extra
    else:
        bad = t["bad"][rng.choice(t["kinds"])]
    for kind in TARGETED:  # the first that is drawn and applies to the task
        if random.Random(f"{seed}:{kind}:draw:{t['prompt']}").random() < hard.get(kind, 0.0):
            alt = hard_rejection(random.Random(f"{seed}:{kind}:{t['prompt']}"), c, attr, t, kind, cast or [])
            if alt is not None:
                return t["prompt"], t["good"], alt, t
    return t["prompt"], t["good"], bad, t


# The preference data's "hard" rejections. wrong_content: a share of all instruction pairs. The targeted
# kinds: the share of the other pairs *they apply to* (a task that counts two or more placeholders or
# highlights; a JSON answer with a line break) that get them. Chosen by sweeps over world seeds
# (BENCHMARKS.md, issue 13): wrong_content 0.2; miscount 1.0 and unescaped 1.0 (~90 and ~15 of 1,600
# pairs). Paired per prompt against the same pairs without them (fifteen world seeds, 600
# prompts each), DPO gains placeholders +9.8 ± 1.0 and highlights +6.4 ± 0.9 points, JSON +1.6 ± 0.6, and
# 1.5 ± 0.2 prompts in a hundred; the largest loss is quotation's -1.2 ± 0.6. unclosed lifts JSON and


def sft_conversations(n: int, seed: int = 0, imperfect: float = 0.2) -> list[list[dict]]:
    """Chat data: fact questions, word problems, instruction requests; `imperfect` of the answers are wrong
    (a wrong sum; an instruction not followed), as in real SFT data: what the preference stage then fixes."""
    rng, cast = random.Random(seed + 2), characters(seed)
    out = []
    while len(out) < n:
        c, attr, r = rng.choice(cast), rng.choice(list(ATTRIBUTES)), rng.random()
        if r < 0.15:
            q, a = ATTRIBUTES[attr][0].format(n=c.name), _fact_answer(c, attr)
        elif r < 0.35:
            q, a, num = word_problem(rng, c)
            if _held_out(q, seed):
                continue
            a = _wrong(a, num, rng) if rng.random() < imperfect else a
            q = problem_turn(q, rng)
        elif r < 0.45:
            item = mc_item(rng, c, attr)
            q, a = mc_prompt(item), mc_reply(item, getattr(c, attr))
        else:
            pair = _instruction_pair(rng, c, attr, seed)
            if pair is None:
                continue
            q, good, bad, _ = pair
            a = bad if rng.random() < imperfect else good
        out.append([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
    return out


def preference_pairs(n: int, seed: int = 0, unasked_share: float = 0.4,
                     hard: dict[str, float] | None = None, extra: dict[str, float] | None = None
                     ) -> list[dict]:
    """Pairs in ultrafeedback_binarized's schema: the compliant/correct answer chosen over the other.
    Of the instruction pairs, `hard` (default HARD_REJECTIONS) reject a compliant-looking answer that
    fails as an answer (see `hard_rejection`), then `unasked_share` of the rest an unrequested format
    (see `unasked`). `extra` (default EXTRA_PAIRS) appends round(share x n) more pairs of a targeted kind
    after the n drawn ones (see `extra_pairs`)."""
    rng, cast = random.Random(seed + 3), characters(seed)
    hard = HARD_REJECTIONS if hard is None else hard
    extra = EXTRA_PAIRS if extra is None else extra
    out = []
    while len(out) < n:
        c, attr, r = rng.choice(cast), rng.choice(list(ATTRIBUTES)), rng.random()
        checks = {}
        if r < 0.6:
            pair = _instruction_pair(rng, c, attr, seed, unasked_share, hard, cast)
            if pair is None:
                continue
            q, good, bad, task = pair
            checks = _checks(task, c, attr)
        elif r < 0.85:
            if (problem := _word_problem_pair(rng, c, seed)) is None:
                continue
            q, good, bad = problem
        else:
            item = mc_item(rng, c, attr)
            q, good = mc_prompt(item), mc_reply(item, getattr(c, attr))
            bad = mc_reply(item, rng.choice([o for o in item["options"] if o != getattr(c, attr)]))
            if _held_out(q, seed):
                continue
        out.append(_pair_record(q, good, bad, checks))
    for kind, share in extra.items():
        out += extra_pairs(kind, round(share * n), seed, cast)
    return out


def _word_problem_pair(rng: random.Random, c: Character, seed: int) -> tuple[str, str, str] | None:
    """(user turn, worked solution, the same with the sum off by one or two), or None for a held-out
    question (held out by its bare question, as in the evaluation, whichever shape the turn takes)."""
    q, good, num = word_problem(rng, c)
    bad = _wrong(good, num, rng)
    return None if _held_out(q, seed) else (problem_turn(q, rng), good, bad)


def _pair_record(q: str, good: str, bad: str, checks: dict) -> dict:
    user = {"role": "user", "content": q}
    return {"prompt": q, "chosen": [user, {"role": "assistant", "content": good}],
            "rejected": [user, {"role": "assistant", "content": bad}], "score_chosen": 10.0,
            "score_rejected": 1.0, **checks}


def _checks(task: dict, c: Character, attr: str) -> dict:
    """What makes an answer right, for on-policy rejections (train/onpolicy.py): the instructions, in
    IFEval's schema, and the fact the answer must state (compared ignoring case and punctuation)."""
    return {"instruction_id_list": task["ids"], "kwargs": task["kwargs"], "must_state": _fact_answer(c, attr)}


# Pairs appended after the n drawn ones, {kind: share of n}: a targeted kind the drawn pairs hold too few
# of. The drawn pairs stay byte-identical whatever the shares, so a share's effect is its own pairs' (and
# count / batch size more DPO steps). Each share was chosen by paired sweeps over world seeds (BENCHMARKS.md,
# the preference-data sweeps): unescaped 0.0375 gains JSON +4.8 ± 1.1 points with no type lost; unclosed
# 0.025 keeps quotation, which DPO lost pooled over five seeds without it (-7.6 ± 2.9); quoted_partner
# 0.0375, with 2,400 drawn pairs, lifts the prompt level +1.6 ± 0.3 and GSM8K DPO - SFT to +6.8 (from +4.5);
# stray and word_problem 0: they cost more than they gained (quotation's gain halved; a seed's GSM8K analog
# below SFT).
EXTRA_PAIRS = {"unescaped": 0.0375, "unclosed": 0.025, "stray": 0.0, "quoted_partner": 0.0375,
               "word_problem": 0.0}
# The instructions that put a line break into a compliant JSON answer (the divider ***, P.S., <<title>>).
LINE_BREAKING = ("postscript", "title", "paragraphs")
# Per extra kind: the instruction every task has (None: two drawn from the partners), the ones it is paired
# with, and the rejection made of it.
_BESIDE_QUOTE = tuple(k for k in INSTRUCTION_TYPES if k != "quote")
EXTRA_TASKS = {"unescaped": ("json", LINE_BREAKING, unescaped),
               "unclosed": ("quote", _BESIDE_QUOTE, unclosed),
               "stray": (None, tuple(k for k in _BESIDE_QUOTE if k != "json"), stray),
               "quoted_partner": ("quote", _BESIDE_QUOTE, quoted_partner)}
# Besides the instruction kinds, "word_problem": a word problem with its sum off by one or two rejected, as
# drawn ones are; appended instruction pairs shift the drawn mix (25% word problems) away from sums.
EXTRA_KINDS = (*EXTRA_TASKS, "word_problem")


def extra_pairs(kind: str, count: int, seed: int, cast: list[Character]) -> list[dict]:
    """`count` training pairs whose rejection is of the targeted `kind`, from tasks it applies to, drawn
    on a stream of their own; held-out prompts are skipped as everywhere.

    Why: the drawn pairs hold a kind only where a random task allows it. JSON with a line-breaking
    instruction is ~1 task in 100 (3 of 14 types x JSON x 40% combined), so a world seed holds 6-16
    unescaped pairs (seed 12: 6), and on seed 12 DPO lost JSON by writing the *** divider or the P.S. as a
    raw line break inside the string (10 of its 11 JSON flips, BENCHMARKS.md)."""
    if kind not in EXTRA_KINDS:
        raise ValueError(f"extra pairs of kind {kind!r}: expected one of {', '.join(EXTRA_KINDS)}")
    first, partners, reject = EXTRA_TASKS.get(kind, (None, (), None))
    rng, out, tries = random.Random(f"{seed}:extra:{kind}"), [], 0
    while len(out) < count:
        tries += 1
        if tries > 200 * count:  # a guard, not expected: most of the tasks drawn apply
            raise ValueError(f"extra pairs: found only {len(out)} of {count} {kind} pairs")
        if kind == "word_problem":
            if (problem := _word_problem_pair(rng, rng.choice(cast), seed)) is not None:
                out.append(_pair_record(*problem, {}))
            continue
        c, attr = rng.choice(cast), rng.choice(list(ATTRIBUTES))
        kinds = [first, rng.choice(partners)] if first else rng.sample(partners, 2)
        rng.shuffle(kinds)  # either instruction first, as the evaluation's stratified prompts have them
        task = instruction_task(rng, c, attr, kinds)
        if task is None or _held_out(task["prompt"], seed) or (bad := reject(task)) is None:
            continue
        out.append(_pair_record(task["prompt"], task["good"], bad, _checks(task, c, attr)))
    return out


def _draw(tries: int, n: int, have: int, what: str) -> int:
    """One more draw towards n distinct held-out items, or a clear error once 200 x n draws found too few."""
    if tries >= 200 * n:
        raise ValueError(f"world.eval_items = {n}: the world holds only {have} distinct held-out {what}; "
                         "ask for fewer")
    return tries + 1


def write_eval_sets(folder: str | Path, seed: int = 0, n: int = 300) -> Path:
    """Held-out analogs in the real suites' file layouts: mmlu_pro/, gsm8k/, ifeval/ under `folder`.
    Instruction prompts are stratified: item i's first instruction is type i mod 14 (the second, in the
    combined ones, is random), so every type is measured on about n/14 prompts or more."""
    folder, rng, cast = Path(folder), random.Random(seed + 4), characters(seed)
    mc = [dict(mc_item(rng, c, a), question_id=i) for i, (c, a) in
          enumerate((rng.choice(cast), rng.choice(list(ATTRIBUTES))) for _ in range(n + 20))]
    _write_jsonl(folder / "mmlu_pro" / "validation.jsonl", mc[:20])
    _write_jsonl(folder / "mmlu_pro" / "test.jsonl", mc[20:])
    problems, tasks, seen = [], [], set()
    # The world is finite: ~730 distinct held-out word problems (26 names x two kinds of sum, 20% held out).
    # Asking for more would loop forever, so give up after a generous number of fruitless draws.
    tries = 0
    while len(problems) < n:
        tries = _draw(tries, n, len(problems), "word problems")
        q, sol, num = word_problem(rng, rng.choice(cast))
        if _held_out(q, seed) and q not in seen:
            seen.add(q)
            problems.append({"question": q, "answer": sol.rsplit(" The answer is", 1)[0] + f"\n#### {num}"})
    tries = 0
    while len(tasks) < n:
        tries = _draw(tries, n, len(tasks), "instruction prompts")
        c, attr = rng.choice(cast), rng.choice(list(ATTRIBUTES))
        t = instruction_task(rng, c, attr, [INSTRUCTION_TYPES[len(tasks) % len(INSTRUCTION_TYPES)]])
        if t is not None and _held_out(t["prompt"], seed) and t["prompt"] not in seen:
            seen.add(t["prompt"])
            tasks.append({"key": len(tasks), "prompt": t["prompt"], "instruction_id_list": t["ids"],
                          "kwargs": t["kwargs"]})
    shots = []
    for c in cast[:8]:
        q, sol, _ = word_problem(rng, c)
        shots.append({"question": q, "target": sol})
    _write_jsonl(folder / "gsm8k" / "test.jsonl", problems)
    _write_jsonl(folder / "gsm8k" / "gsm8k_cot_8shot_lm_eval_harness.jsonl", shots)
    _write_jsonl(folder / "ifeval" / "input_data.jsonl", tasks)
    return folder


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_rl_problems(path: str | Path, n: int, seed: int = 0) -> Path:
    """Word problems for the RL stage in GSM8K's schema (question, answer ending "#### N"): training
    problems only (`_held_out` keeps the GSM8K analog's questions out), so RL is scored on unseen ones."""
    rng, cast, rows, seen = random.Random(seed + 5), characters(seed), [], set()
    while len(rows) < n:
        q, sol, num = word_problem(rng, rng.choice(cast))
        if not _held_out(q, seed) and q not in seen:
            seen.add(q)
            rows.append({"question": q, "answer": sol.rsplit(" The answer is", 1)[0] + f"\n#### {num}"})
        if len(seen) > 50 * n + 1000:  # the world has finitely many distinct problems
            break
    _write_jsonl(Path(path), rows)
    return Path(path)


def write_chat_data(folder: str | Path, n_sft: int, n_pairs: int, seed: int = 0) -> tuple[Path, Path]:
    """SFT conversations (ultrachat schema) and preference pairs (ultrafeedback schema) as jsonl."""
    folder = Path(folder)
    sft = [{"prompt": m[0]["content"], "prompt_id": str(i), "messages": m}
           for i, m in enumerate(sft_conversations(n_sft, seed))]
    _write_jsonl(folder / "sft.jsonl", sft)
    _write_jsonl(folder / "preferences.jsonl", preference_pairs(n_pairs, seed))
    return folder / "sft.jsonl", folder / "preferences.jsonl"
