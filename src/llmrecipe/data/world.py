"""The `tiny` preset's embedded world: deterministic, generated data a few-million-parameter model can
learn on a CPU in minutes (no downloaded or copied text).

Characters with a kind, a home, a colour and a food. From them: a pre-training corpus (facts, stories,
arithmetic in words); SFT conversations (questions about the facts, word problems ending "The answer is N.",
and requests carrying IFEval-style verifiable instructions — with a fixed share of imperfect answers, as
real SFT data has); preference pairs (a compliant/correct answer chosen over a non-compliant/wrong one);
and held-out eval analogs written in the real suites' schemas (multiple choice as MMLU-Pro, word problems
as GSM8K, verifiable instructions as IFEval), so the same code scores them. Everything follows from `seed`.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_write_text
from .mcq import format_question, header

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


# ---- SFT, preferences and eval analogs ----
ATTRIBUTES = {
    "kind": ("What kind of animal is {n}?", "{n} is a {kind}."),
    "home": ("Where does {n} live?", "{n} lives in {home}."),
    "colour": ("What colour does {n} like?", "{n} likes the colour {colour}."),
    "food": ("What is the favourite food of {n}?", "The favourite food of {n} is {food}."),
}
END_PHRASES = ["Have a nice day.", "That is all.", "Any other questions?"]
KEYWORDS = ["river", "garden", "lake", "forest"]


def _fact_answer(c: Character, attr: str) -> str:
    return ATTRIBUTES[attr][1].format(n=c.name, **vars(c))


def _long_answer(c: Character, attr: str) -> str:
    """The fact plus a second sentence with a comma (so 'no commas' is a real constraint)."""
    return f"{_fact_answer(c, attr)} {c.name} is a {c.kind} from {c.home}, and {c.name} likes {c.food}."


# IFEval-style verifiable instructions: 14 of the benchmark's 25 types, each checked by its real rule
# (eval/ifeval/rules.py). Left out: those that need NLTK's sentence/word tokenizers (a fresh machine may not
# have its data), a response language (langdetect is unreliable on two-sentence answers), and those no
# two-layer model could follow (repeat the prompt, two responses, nth paragraph's first word).
PLACEHOLDERS = ["[address]", "[date]", "[name]"]
INSTRUCTION_TYPES = ("no_comma", "end", "keyword", "bullets", "json", "quote", "lower", "upper", "postscript",
                     "title", "highlight", "placeholder", "short", "paragraphs")
IFEVAL_IDS = {"no_comma": "punctuation:no_comma", "end": "startend:end_checker",
              "keyword": "keywords:existence",
              "bullets": "detectable_format:number_bullet_lists", "json": "detectable_format:json_format",
              "quote": "startend:quotation", "lower": "change_case:english_lowercase",
              "upper": "change_case:english_capital", "postscript": "detectable_content:postscript",
              "title": "detectable_format:title",
              "highlight": "detectable_format:number_highlighted_sections",
              "placeholder": "detectable_content:number_placeholders",
              "short": "length_constraints:number_words",
              "paragraphs": "length_constraints:number_paragraphs"}


def _instruction(kind: str, rng: random.Random) -> tuple[str, dict]:
    """(the sentence added to the prompt, the IFEval kwargs) for one instruction type."""
    if kind == "no_comma":
        return "Do not use any commas.", {}
    if kind == "end":
        p = rng.choice(END_PHRASES)
        return f'End your answer with the phrase "{p}"', {"end_phrase": p}
    if kind == "keyword":
        w = rng.choice(KEYWORDS)
        return f'Include the word "{w}" in your answer.', {"keywords": [w]}
    if kind == "bullets":
        k = rng.choice([2, 3])
        return f"Answer with exactly {k} bullet points.", {"num_bullets": k}
    if kind == "json":
        return "Wrap your whole answer in JSON.", {}
    if kind == "quote":
        return "Wrap your entire answer in double quotation marks.", {}
    if kind == "lower":
        return "Write your whole answer in lowercase letters.", {}
    if kind == "upper":
        return "Write your whole answer in capital letters.", {}
    if kind == "postscript":
        return "At the end of your answer, add a postscript starting with P.S.", {"postscript_marker": "P.S."}
    if kind == "title":
        return "Give your answer a title in double angular brackets, such as <<my title>>.", {}
    if kind == "highlight":
        n = rng.choice([1, 2])
        return (f"Highlight at least {n} section{'s' * (n > 1)} of your answer with markdown, such as "
                "*highlighted section*."), {"num_highlights": n}
    if kind == "placeholder":
        n = rng.choice([1, 2])
        return (f"Include at least {n} placeholder{'s' * (n > 1)} in square brackets, such as [address]."),\
            {"num_placeholders": n}
    if kind == "short":
        n = rng.choice([8, 10, 12])
        return f"Answer with less than {n} words.", {"num_words": n, "relation": "less than"}
    if kind == "paragraphs":
        return "Write 2 paragraphs separated by the markdown divider ***.", {"num_paragraphs": 2}
    raise ValueError(kind)


def respond(c: Character, attr: str, spec: dict[str, dict]) -> str:
    """The answer to a fact question that follows exactly the instructions in `spec` ({kind: kwargs}).
    Content first (which sentences), then layout (bullets, paragraphs), then decorations (title, postscript,
    end phrase), then whole-text transforms (case, JSON, quotation marks): the order a careful writer uses."""
    sentences = [_fact_answer(c, attr)]
    if "short" not in spec:  # the second sentence has a comma, so "no commas" is a real constraint
        sentences.append(f"{c.name} is a {c.kind} from {c.home}, and {c.name} likes {c.food}.")
    if "keyword" in spec:
        sentences.append(f"{c.name} likes the {spec['keyword']['keywords'][0]}.")
    if "placeholder" in spec:
        n = spec["placeholder"]["num_placeholders"]
        sentences.append("Write to " + " on ".join(PLACEHOLDERS[:n]) + ".")
    if "no_comma" in spec:
        sentences = [s.replace(",", "") for s in sentences]
    if "highlight" in spec:
        n = spec["highlight"]["num_highlights"]
        sentences = [f"*{s}*" if i < n else s for i, s in enumerate(sentences)]
    if "bullets" in spec:
        others = [_fact_answer(c, a) for a in ATTRIBUTES if a != attr]
        body = "\n".join(f"* {s}" for s in (sentences + others)[: spec["bullets"]["num_bullets"]])
    elif "paragraphs" in spec:
        body = sentences[0] + "\n***\n" + " ".join(sentences[1:])
    else:
        body = " ".join(sentences)
    if "title" in spec:
        body = f"<<{c.name} the {c.kind}>>\n{body}"
    if "postscript" in spec:
        body += f"\nP.S. {c.name} says hello."
    if "end" in spec:
        body += " " + spec["end"]["end_phrase"]
    if "lower" in spec:
        body = body.lower()
    if "upper" in spec:
        body = body.upper()
    if "json" in spec:
        body = json.dumps({"answer": body})
    if "quote" in spec:
        body = f'"{body}"'
    return body


def instruction_task(rng: random.Random, c: Character, attr: str, kinds: list[str] | None = None,
                     combine: float = 0.4) -> dict | None:
    """A question with one or two verifiable instructions (two with probability `combine`, as IFEval
    combines them): prompt, IFEval ids + kwargs, a compliant answer, and for each instruction an answer
    that violates it alone. Every answer is checked by the real IFEval rules; a combination they show to be
    contradictory (lowercase and capitals, JSON in quotation marks, ...) returns None."""
    from ..eval.ifeval.rules import check

    kinds = kinds or [rng.choice(INSTRUCTION_TYPES)]
    if len(kinds) == 1 and rng.random() < combine:
        kinds = kinds + [rng.choice([k for k in INSTRUCTION_TYPES if k != kinds[0]])]
    spec, texts = {}, []
    for k in kinds:
        text, kwargs = _instruction(k, rng)
        spec[k] = kwargs
        texts.append(text)
    ids, kwargs = [IFEVAL_IDS[k] for k in kinds], [spec[k] for k in kinds]
    good = respond(c, attr, spec)
    bad = {k: respond(c, attr, {j: v for j, v in spec.items() if j != k}) for k in kinds}
    if not all(check(i, kw, good) for i, kw in zip(ids, kwargs)):
        return None
    if any(check(IFEVAL_IDS[k], spec[k], bad[k]) for k in kinds):
        return None
    prompt = " ".join([ATTRIBUTES[attr][0].format(n=c.name), *texts])
    return dict(prompt=prompt, kinds=kinds, ids=ids, kwargs=kwargs, good=good, bad=bad)


APPENDED = ("keyword", "end", "placeholder", "postscript")  # followed by writing more after the answer


def unasked(rng: random.Random, c: Character, attr: str, task: dict) -> str | None:
    """The compliant answer plus one thing nobody asked for (capitals, quotation marks, a title, a keyword
    sentence, ...), for a preference pair that prefers doing what was asked and only that.

    Why: a pair like "end with 'That is all.'" (chosen = answer + phrase, rejected = answer) and one like
    "include 'forest'" (chosen = answer + "X likes the forest.") differ only after the shared answer, so
    DPO's gradient lands on one position: "go on after the answer" — and the cheapest way to raise both
    is one prompt-blind continuation. Measured before these pairs existed (world seed 0): DPO
    ended 12 of 13 end-phrase answers with "X likes the forest." instead of the phrase (92% → 8%) while
    quotation marks went 0% → 100%; with 14 types, it appended "Write to [address]." to lowercase answers
    (64% → 46%). Pairs that reject the continuation where it was not asked teach DPO *when* to continue,
    not just *that* it may."""
    # mostly the appended kinds: the measured failure is going on after the answer where nobody asked
    family = APPENDED if rng.random() < 0.7 else ("quote", "upper", "lower", "title", "json", "bullets")
    extra = rng.choice([k for k in family if k not in task["kinds"]] or ["quote"])
    spec = dict(zip(task["kinds"], task["kwargs"]))
    spec[extra] = _instruction(extra, rng)[1]
    from ..eval.ifeval.rules import check

    out = respond(c, attr, spec)
    follows = all(check(i, kw, out) for i, kw in zip(task["ids"], task["kwargs"]))
    return out if out != task["good"] and follows else None


def word_problem(rng: random.Random, c: Character) -> tuple[str, str, int]:
    """(question, worked solution ending "The answer is N.", N)."""
    x, y = rng.randint(2, 10), rng.randint(1, 9)
    if rng.random() < 0.5:
        q = f"{c.name} has {x} {c.food} and finds {y} more. How many {c.food} does {c.name} have now?"
        return q, (f"{c.name} has {x} {c.food}. {c.name} finds {y} more. {x} + {y} = {x + y}. "
                   f"The answer is {x + y}."), x + y
    x, y = max(x, y), min(x, y)
    q = f"{c.name} has {x} {c.food} and eats {y}. How many {c.food} does {c.name} have left?"
    return q, (f"{c.name} has {x} {c.food}. {c.name} eats {y}. {x} - {y} = {x - y}. "
               f"The answer is {x - y}."), x - y


def problem_turn(q: str, rng: random.Random) -> str:
    """A word problem's user turn, in one of the two shapes real chat data carries: the bare question, or
    GSM8K's "Q: …\nA:" (the user turn of lm-eval's gsm8k_cot under --apply_chat_template, which the GSM8K
    analog uses). With bare questions only, DPO's word-problem pairs never saw the shape the evaluation
    asks in, and DPO lost ~3 points of GSM8K analog on 2 of 5 world seeds (BENCHMARKS.md, issue 13)."""
    return f"Q: {q}\nA:" if rng.random() < 0.5 else q


def _wrong(solution: str, n: int, rng: random.Random) -> str:
    wrong = n + rng.choice([-2, -1, 1, 2])
    return solution.replace(f"= {n}. The answer is {n}.", f"= {wrong}. The answer is {wrong}.")


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
# quotation but costs bullets (-3.0 ± 1.2): off; truncated: off.
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
    from ..eval.ifeval.rules import check

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


def mc_item(rng: random.Random, c: Character, attr: str) -> dict:
    pool = {"kind": KINDS, "home": PLACES, "colour": COLOURS, "food": FOODS}[attr]
    gold = getattr(c, attr)
    options = rng.sample([o for o in pool if o != gold], 3) + [gold]
    rng.shuffle(options)
    return {"question": ATTRIBUTES[attr][0].format(n=c.name), "options": options,
            "answer": "ABCD"[options.index(gold)], "category": attr}


def mc_reply(item: dict, option: str) -> str:
    """"Answer: fox": the option's text, which the tiny preset's MMLU-Pro analog ranks by log-likelihood."""
    return f"Answer: {option}"


def mc_prompt(item: dict) -> str:
    """The user turn of a chat-prompted multiple-choice question (the reply starts with "Answer:")."""
    return (header(item["category"]) + format_question(item, False))[: -len("Answer:")].rstrip()


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
