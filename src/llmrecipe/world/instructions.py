"""Questions about the cast and the IFEval-style verifiable instructions added to them (the prompt
and its compliant answer), the multiple-choice items and the word problems of the GSM8K analog."""
from __future__ import annotations

import json
import random

from ..data.mcq import format_question, header
from ..ifeval_rules import check
from .cast import COLOURS, FOODS, KINDS, PLACES, Character

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
# (ifeval_rules.py). Left out: those that need NLTK's sentence/word tokenizers (a fresh machine may not
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
