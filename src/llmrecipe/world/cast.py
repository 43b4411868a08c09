"""The world's cast: characters with a kind, a home, a colour and a food, drawn from the seed."""
from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ["Ada", "Bo", "Cleo", "Dax", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lia", "Milo", "Nia",
         "Oto", "Pia", "Quin", "Rae", "Sol", "Tess", "Uma", "Vik", "Wren", "Xia", "Yuri", "Zed"]
KINDS = ["fox", "owl", "cat", "bear", "frog", "deer", "wolf", "hare"]
PLACES = ["Oakvale", "Riverbend", "Stonehill", "Mistwood", "Sunmeadow", "Frostpeak"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]
FOODS = ["apples", "berries", "honey", "fish", "nuts", "bread"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                "nineteen", "twenty"]


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
    return [f"{c.name} is a {c.kind}.", f"{c.name} lives in {c.home}.",
            f"{c.name} likes the colour {c.colour}.", f"The favourite food of {c.name} is {c.food}."]
