"""The pre-training corpus: facts, stories, arithmetic in words and the formats the later stages ask
for (lists, JSON, quotes, multiple choice), so SFT teaches a format the base model has seen."""
from __future__ import annotations

import json
import random
from pathlib import Path

from ..files import atomic_write_text
from .cast import NAMES, NUMBER_WORDS, Character, characters, fact_sentences
from .instructions import (ATTRIBUTES, END_PHRASES, INSTRUCTION_TYPES, KEYWORDS, _fact_answer, _instruction,
                           mc_item, respond)


def _story(rng: random.Random, cast: list[Character]) -> str:
    a, b = rng.sample(cast, 2)
    return (f"One morning {a.name} the {a.kind} from {a.home} went to visit a friend. {b.name} the "
            f"{b.kind} lives in {b.home}. {a.name} brought some {a.food}, because {a.name} "
            f"loves {a.food}. {b.name} wore something {b.colour}. They shared the {a.food} and talked until "
            f"the evening.")


def _arithmetic(rng: random.Random, cast: list[Character], digit_sums: bool = False) -> str:
    """A little story with a sum in words, then the same sum in digits (the skill word problems need).

    With `digit_sums` the equation comes before the story's result instead (`_digit_sum`)."""
    if digit_sums:
        return _digit_sum(rng, cast)
    c = rng.choice(cast)
    x, y = rng.randint(1, 10), rng.randint(1, 10)
    if rng.random() < 0.5:
        return (f"{c.name} has {NUMBER_WORDS[x]} {c.food} and finds {NUMBER_WORDS[y]} more. Now {c.name} has "
                f"{NUMBER_WORDS[x + y]} {c.food}. {x} + {y} = {x + y}. The answer is {x + y}.")
    x, y = max(x, y), min(x, y)
    return (f"{c.name} has {NUMBER_WORDS[x]} {c.food} and eats {NUMBER_WORDS[y]}. Now {c.name} has "
            f"{NUMBER_WORDS[x - y]} {c.food} left. {x} - {y} = {x - y}. The answer is {x - y}.")


def _digit_sum(rng: random.Random, cast: list[Character]) -> str:
    """A little story with a sum, the sum in digits, then the result in the story's own words; half the
    stories carry their numbers in digits, half in words (`world.digit_sums=1`, the tiny preset's).

    Why: word problems need a sum computed from digits, and `_arithmetic` writes the result in words before
    the equation, so its digits only copy it. That corpus's base models put P 0.998 on the digit sum after
    the words and 0.09 with digits alone; with these documents instead, 0.56, and their SFT models 0.51 on the
    world's 134 sums instead of 0.23 (BENCHMARKS.md, digit sums)."""
    c = rng.choice(cast)
    x, y = rng.randint(1, 10), rng.randint(1, 10)
    add = rng.random() < 0.5
    if not add:  # nothing negative: a character cannot eat more than it has
        x, y = max(x, y), min(x, y)
    z, op = (x + y, "+") if add else (x - y, "-")
    a, b, r = (str(x), str(y), str(z)) if rng.random() < 0.5 else (NUMBER_WORDS[x], NUMBER_WORDS[y],
                                                                    NUMBER_WORDS[z])
    did, left = (f"finds {b} more", "") if add else (f"eats {b}", " left")
    return (f"{c.name} has {a} {c.food} and {did}. {x} {op} {y} = {z}. Now {c.name} has {r} {c.food}{left}. "
            f"The answer is {z}.")


def _formats(rng: random.Random, c: Character) -> str:
    """The facts in the shapes text comes in: Q/A, bullet lists, JSON records, quotes, quizzes. (Not the
    chat template, worked word problems or the eval's multiple-choice layout: those are what SFT teaches.)"""
    r = rng.random()
    attr = rng.choice(list(ATTRIBUTES))
    if rng.random() < 0.3:  # the shapes IFEval asks for (capitals, titles, P.S., ***, ...), never the asking
        kinds = rng.sample(INSTRUCTION_TYPES, k=rng.randint(1, 2))
        spec = {k: _instruction(k, rng)[1] for k in kinds}
        if rng.random() < CASE_COPIES:
            return _case_copy(c, attr, spec, rng)
        return respond(c, attr, spec)
    if r < 0.1:
        item = mc_item(rng, c, attr)
        options = " ".join(f"{letter}. {o}" for letter, o in zip("ABCD", item["options"]))
        return f"Quiz: {item['question']} {options}. The answer is {item['answer']}."
    if r < 0.35:
        return f"Q: {ATTRIBUTES[attr][0].format(n=c.name)}\nA: {_fact_answer(c, attr)}"
    if r < 0.5:
        return f"Facts about {c.name}:\n" + "\n".join(f"* {_fact_answer(c, a)}" for a in rng.sample(
            list(ATTRIBUTES), k=rng.randint(2, 4)))
    if r < 0.6:
        return json.dumps({"name": c.name, "kind": c.kind, "home": c.home, "colour": c.colour,
                           "food": c.food})
    if r < 0.7:
        return json.dumps({"question": ATTRIBUTES[attr][0].format(n=c.name), "answer": _fact_answer(c, attr)})
    if r < 0.85:
        return f'{c.name} said, "I live in {c.home} and I like {c.food}."'
    return (f"Dear {rng.choice(NAMES)}, I went to the {rng.choice(KEYWORDS)} today. "
            f"{rng.choice(END_PHRASES)} From {c.name}")


# Share of the formatted documents that show an answer and then the same answer in lowercase or capitals.
CASE_COPIES = 0.5


def _case_copy(c: Character, attr: str, spec: dict[str, dict], rng: random.Random) -> str:
    """An answer, then the same answer in lowercase or capitals: copying under a change of case.

    Why: DPO's trades were case-changing prompts (BENCHMARKS.md, issue 13): the prompt says "Quin" and
    "That is all.", a lowercase answer needs "quin" and "that is all.", and our byte-level BPE writes the
    two with different tokens (capitals letter by letter), so the copy is a different skill from plain
    copying. Nothing in the corpus showed it, so the SFT model mostly ignored case instructions, and when
    DPO taught it to obey them it lost the other instruction of the prompt (the end phrase, the name). As
    the arithmetic documents put a sum in words and then in digits, these put the text, then its case."""
    case = next((k for k in spec if k in ("lower", "upper")), rng.choice(["lower", "upper"]))
    plain = {k: v for k, v in spec.items() if k not in ("lower", "upper", "json", "quote")}
    return respond(c, attr, plain) + "\n" + respond(c, attr, {**spec, case: {}})


# Facts and stories take 45% of a document's parts (`pretrain_documents`), so arithmetic can take at most 55.
MAX_ARITHMETIC_PERCENT = 55


def pretrain_documents(n_docs: int, seed: int = 0, arithmetic_percent: int = 25,
                       digit_sums: bool = False) -> list[str]:
    """Facts, stories, arithmetic, and the facts in other formats; each document mixes a few. Of the parts,
    30% are facts, 15% stories, `arithmetic_percent` arithmetic and the rest formats."""
    if not 0 <= arithmetic_percent <= MAX_ARITHMETIC_PERCENT:
        raise ValueError(f"arithmetic_percent = {arithmetic_percent}: must be 0-{MAX_ARITHMETIC_PERCENT} "
                         "(facts and stories hold 45 of the 100)")
    rng, cast = random.Random(seed + 1), characters(seed)
    arithmetic_below = (45 + arithmetic_percent) / 100  # 70 / 100 is the float 0.7 exactly: the same corpus
    docs = []
    for _ in range(n_docs):
        parts = []
        for _ in range(rng.randint(2, 5)):
            r = rng.random()
            if r < 0.3:
                c = rng.choice(cast)
                parts.append(" ".join(rng.sample(fact_sentences(c), k=rng.randint(2, 4))))
            elif r < 0.45:
                parts.append(_story(rng, cast))
            elif r < arithmetic_below:
                parts.append(_arithmetic(rng, cast, digit_sums))
            else:
                parts.append(_formats(rng, rng.choice(cast)))
        docs.append("\n".join(parts))
    return docs


def write_pretrain_corpus(path: str | Path, n_docs: int, seed: int = 0, arithmetic_percent: int = 25,
                          digit_sums: bool = False) -> Path:
    """The corpus as a jsonl file in the hub's pre-training schema (`text`), for `prepare`."""
    docs = pretrain_documents(n_docs, seed, arithmetic_percent, digit_sums)
    atomic_write_text(path, "".join(json.dumps({"text": d}) + "\n" for d in docs))
    return Path(path)
