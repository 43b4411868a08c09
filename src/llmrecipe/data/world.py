"""The `tiny` preset's embedded world: a deterministic, generated corpus a few-million-parameter model can
learn on a CPU in minutes (no downloaded or copied text).

Characters with a kind, a home, a colour and a food; documents state their facts, tell short stories
about them, and do arithmetic in words. Everything follows from `seed`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_write_text

NAMES = ["Ada", "Bo", "Cleo", "Dax", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lia", "Milo", "Nia", "Oto",
         "Pia", "Quin", "Rae", "Sol", "Tess", "Uma", "Vik", "Wren", "Xia", "Yuri", "Zed"]
KINDS = ["fox", "owl", "cat", "bear", "frog", "deer", "wolf", "hare"]
PLACES = ["Oakvale", "Riverbend", "Stonehill", "Mistwood", "Sunmeadow", "Frostpeak"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]
FOODS = ["apples", "berries", "honey", "fish", "nuts", "bread"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]


@dataclass(frozen=True)
class Character:
    name: str
    kind: str
    home: str
    colour: str
    food: str


def characters(seed: int = 0) -> list[Character]:
    rng = random.Random(seed)
    return [Character(n, rng.choice(KINDS), rng.choice(PLACES), rng.choice(COLOURS), rng.choice(FOODS))
            for n in NAMES]


def fact_sentences(c: Character) -> list[str]:
    return [f"{c.name} is a {c.kind}.", f"{c.name} lives in {c.home}.", f"{c.name} likes the colour {c.colour}.",
            f"The favourite food of {c.name} is {c.food}."]


def _story(rng: random.Random, cast: list[Character]) -> str:
    a, b = rng.sample(cast, 2)
    return (f"One day {a.name} the {a.kind} left {a.home} to visit {b.name}. {b.name} the {b.kind} lives in "
            f"{b.home}. {a.name} brought some {a.food}, because {a.name} loves {a.food}. {b.name} wore something "
            f"{b.colour}. They shared the {a.food} and talked until the evening.")


def _arithmetic(rng: random.Random, cast: list[Character]) -> str:
    c = rng.choice(cast)
    x, y = rng.randint(1, 10), rng.randint(1, 10)
    if rng.random() < 0.5:
        return (f"{c.name} has {NUMBER_WORDS[x]} {c.food} and finds {NUMBER_WORDS[y]} more. Now {c.name} has "
                f"{NUMBER_WORDS[x + y]} {c.food}. {x} plus {y} is {x + y}.")
    x, y = max(x, y), min(x, y)
    return (f"{c.name} has {NUMBER_WORDS[x]} {c.food} and eats {NUMBER_WORDS[y]}. Now {c.name} has "
            f"{NUMBER_WORDS[x - y]} {c.food} left. {x} minus {y} is {x - y}.")


def pretrain_documents(n_docs: int, seed: int = 0) -> list[str]:
    """Facts, stories and arithmetic in words; each document mixes a few of them."""
    rng, cast = random.Random(seed + 1), characters(seed)
    docs = []
    for _ in range(n_docs):
        parts = []
        for _ in range(rng.randint(2, 5)):
            r = rng.random()
            if r < 0.4:
                c = rng.choice(cast)
                parts.append(" ".join(rng.sample(fact_sentences(c), k=rng.randint(2, 4))))
            elif r < 0.7:
                parts.append(_story(rng, cast))
            else:
                parts.append(_arithmetic(rng, cast))
        docs.append("\n".join(parts))
    return docs


def write_pretrain_corpus(path: str | Path, n_docs: int, seed: int = 0) -> Path:
    """The corpus as a jsonl file in the hub's pre-training schema (`text`), for `prepare`."""
    import json

    atomic_write_text(path, "".join(json.dumps({"text": d}) + "\n" for d in pretrain_documents(n_docs, seed)))
    return Path(path)
