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
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_write_text
from .mcq import format_question, header

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
    return (f"One morning {a.name} the {a.kind} from {a.home} went to visit a friend. {b.name} the "
            f"{b.kind} lives in {b.home}. {a.name} brought some {a.food}, because {a.name} "
            f"loves {a.food}. {b.name} wore something {b.colour}. They shared the {a.food} and talked until the "
            f"evening.")


def _arithmetic(rng: random.Random, cast: list[Character]) -> str:
    """A little story with a sum in words, then the same sum in digits (the skill word problems need)."""
    c = rng.choice(cast)
    x, y = rng.randint(1, 10), rng.randint(1, 10)
    if rng.random() < 0.5:
        return (f"{c.name} has {NUMBER_WORDS[x]} {c.food} and finds {NUMBER_WORDS[y]} more. Now {c.name} has "
                f"{NUMBER_WORDS[x + y]} {c.food}. {x} + {y} = {x + y}. The answer is {x + y}.")
    x, y = max(x, y), min(x, y)
    return (f"{c.name} has {NUMBER_WORDS[x]} {c.food} and eats {NUMBER_WORDS[y]}. Now {c.name} has "
            f"{NUMBER_WORDS[x - y]} {c.food} left. {x} - {y} = {x - y}. The answer is {x - y}.")


def _formats(rng: random.Random, c: Character) -> str:
    """The facts in the shapes text comes in: Q/A, bullet lists, JSON records, quotes, quizzes. (Not the
    chat template, worked word problems or the eval's multiple-choice layout: those are what SFT teaches.)"""
    r = rng.random()
    attr = rng.choice(list(ATTRIBUTES))
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
        return json.dumps({"name": c.name, "kind": c.kind, "home": c.home, "colour": c.colour, "food": c.food})
    if r < 0.7:
        return json.dumps({"question": ATTRIBUTES[attr][0].format(n=c.name), "answer": _fact_answer(c, attr)})
    if r < 0.85:
        return f'{c.name} said, "I live in {c.home} and I like {c.food}."'
    return f"Dear {rng.choice(NAMES)}, I went to the {rng.choice(KEYWORDS)} today. {rng.choice(END_PHRASES)} From {c.name}"


def pretrain_documents(n_docs: int, seed: int = 0) -> list[str]:
    """Facts, stories, arithmetic, and the facts in other formats; each document mixes a few."""
    rng, cast = random.Random(seed + 1), characters(seed)
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
            elif r < 0.7:
                parts.append(_arithmetic(rng, cast))
            else:
                parts.append(_formats(rng, rng.choice(cast)))
        docs.append("\n".join(parts))
    return docs


def write_pretrain_corpus(path: str | Path, n_docs: int, seed: int = 0) -> Path:
    """The corpus as a jsonl file in the hub's pre-training schema (`text`), for `prepare`."""
    atomic_write_text(path, "".join(json.dumps({"text": d}) + "\n" for d in pretrain_documents(n_docs, seed)))
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


def instruction_task(rng: random.Random, c: Character, attr: str) -> dict:
    """A question with one verifiable instruction: prompt, IFEval id + kwargs, compliant and violating answers."""
    q, ans = ATTRIBUTES[attr][0].format(n=c.name), _long_answer(c, attr)
    kind = rng.choice(["no_comma", "end", "keyword", "bullets", "json", "quote"])
    if kind == "no_comma":
        return dict(prompt=f"{q} Do not use any commas.", id="punctuation:no_comma", kwargs={},
                    good=ans.replace(",", ""), bad=ans)
    if kind == "end":
        p = rng.choice(END_PHRASES)
        return dict(prompt=f'{q} End your answer with the phrase "{p}"', id="startend:end_checker",
                    kwargs={"end_phrase": p}, good=f"{ans} {p}", bad=ans)
    if kind == "keyword":
        w = rng.choice(KEYWORDS)
        return dict(prompt=f'{q} Include the word "{w}" in your answer.', id="keywords:existence",
                    kwargs={"keywords": [w]}, good=f"{ans} {c.name} likes the {w}.", bad=ans)
    if kind == "bullets":
        k = rng.choice([2, 3])
        facts = [_fact_answer(c, a) for a in ATTRIBUTES]
        facts.insert(0, facts.pop(list(ATTRIBUTES).index(attr)))
        return dict(prompt=f"{q} Answer with exactly {k} bullet points.", id="detectable_format:number_bullet_lists",
                    kwargs={"num_bullets": k}, good="\n".join(f"* {f}" for f in facts[:k]), bad=" ".join(facts[:k]))
    if kind == "json":
        return dict(prompt=f"{q} Wrap your whole answer in JSON.", id="detectable_format:json_format", kwargs={},
                    good=json.dumps({"answer": ans}), bad=ans)
    return dict(prompt=f"{q} Wrap your entire answer in double quotation marks.", id="startend:quotation",
                kwargs={}, good=f'"{ans}"', bad=ans)


def word_problem(rng: random.Random, c: Character) -> tuple[str, str, int]:
    """(question, worked solution ending "The answer is N.", N)."""
    x, y = rng.randint(2, 10), rng.randint(1, 9)
    if rng.random() < 0.5:
        q = f"{c.name} has {x} {c.food} and finds {y} more. How many {c.food} does {c.name} have now?"
        return q, f"{c.name} has {x} {c.food}. {c.name} finds {y} more. {x} + {y} = {x + y}. The answer is {x + y}.", x + y
    x, y = max(x, y), min(x, y)
    q = f"{c.name} has {x} {c.food} and eats {y}. How many {c.food} does {c.name} have left?"
    return q, f"{c.name} has {x} {c.food}. {c.name} eats {y}. {x} - {y} = {x - y}. The answer is {x - y}.", x - y


def _wrong(solution: str, n: int, rng: random.Random) -> str:
    wrong = n + rng.choice([-2, -1, 1, 2])
    return solution.replace(f"= {n}. The answer is {n}.", f"= {wrong}. The answer is {wrong}.")


def _held_out(key: str, seed: int, share: float = 0.2) -> bool:
    """A stable split of (task) keys into training and evaluation."""
    return random.Random(f"{seed}:{key}").random() < share


def sft_conversations(n: int, seed: int = 0, imperfect: float = 0.2) -> list[list[dict]]:
    """Chat data: fact questions, word problems, instruction requests; `imperfect` of the answers are wrong."""
    rng, cast = random.Random(seed + 2), characters(seed)
    out = []
    while len(out) < n:
        c, attr, r = rng.choice(cast), rng.choice(list(ATTRIBUTES)), rng.random()
        if r < 0.2:
            q, a = ATTRIBUTES[attr][0].format(n=c.name), _fact_answer(c, attr)
        elif r < 0.45:
            q, a, num = word_problem(rng, c)
            if _held_out(q, seed):
                continue
            a = _wrong(a, num, rng) if rng.random() < imperfect else a
        elif r < 0.6:
            item = mc_item(rng, c, attr)
            q, a = mc_prompt(item), mc_reply(item, getattr(c, attr))
        else:
            t = instruction_task(rng, c, attr)
            if _held_out(t["prompt"], seed):
                continue
            q, a = t["prompt"], t["bad"] if rng.random() < imperfect else t["good"]
        out.append([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
    return out


def preference_pairs(n: int, seed: int = 0) -> list[dict]:
    """Pairs in ultrafeedback_binarized's schema: the compliant/correct answer chosen over the other."""
    rng, cast = random.Random(seed + 3), characters(seed)
    out = []
    while len(out) < n:
        c, attr, r = rng.choice(cast), rng.choice(list(ATTRIBUTES)), rng.random()
        if r < 0.6:
            t = instruction_task(rng, c, attr)
            q, good, bad = t["prompt"], t["good"], t["bad"]
        elif r < 0.85:
            q, good, num = word_problem(rng, c)
            bad = _wrong(good, num, rng)
        else:
            item = mc_item(rng, c, attr)
            q, good = mc_prompt(item), mc_reply(item, getattr(c, attr))
            bad = mc_reply(item, rng.choice([o for o in item["options"] if o != getattr(c, attr)]))
        if _held_out(q, seed):
            continue
        user = {"role": "user", "content": q}
        out.append({"prompt": q, "chosen": [user, {"role": "assistant", "content": good}],
                    "rejected": [user, {"role": "assistant", "content": bad}], "score_chosen": 10.0,
                    "score_rejected": 1.0})
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


def write_eval_sets(folder: str | Path, seed: int = 0, n: int = 60) -> Path:
    """Held-out analogs in the real suites' file layouts: mmlu_pro/, gsm8k/, ifeval/ under `folder`."""
    folder, rng, cast = Path(folder), random.Random(seed + 4), characters(seed)
    mc = [dict(mc_item(rng, c, a), question_id=i) for i, (c, a) in
          enumerate((rng.choice(cast), rng.choice(list(ATTRIBUTES))) for _ in range(n + 20))]
    _write_jsonl(folder / "mmlu_pro" / "validation.jsonl", mc[:20])
    _write_jsonl(folder / "mmlu_pro" / "test.jsonl", mc[20:])
    problems, tasks, seen = [], [], set()
    while len(problems) < n or len(tasks) < n:
        c, attr = rng.choice(cast), rng.choice(list(ATTRIBUTES))
        q, sol, num = word_problem(rng, c)
        if len(problems) < n and _held_out(q, seed) and q not in seen:
            seen.add(q)
            problems.append({"question": q, "answer": sol.rsplit(" The answer is", 1)[0] + f"\n#### {num}"})
        t = instruction_task(rng, c, attr)
        if len(tasks) < n and _held_out(t["prompt"], seed) and t["prompt"] not in seen:
            seen.add(t["prompt"])
            tasks.append({"key": len(tasks), "prompt": t["prompt"], "instruction_id_list": [t["id"]],
                          "kwargs": [t["kwargs"]]})
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


def write_chat_data(folder: str | Path, n_sft: int, n_pairs: int, seed: int = 0) -> tuple[Path, Path]:
    """SFT conversations (ultrachat schema) and preference pairs (ultrafeedback schema) as jsonl."""
    folder = Path(folder)
    sft = [{"prompt": m[0]["content"], "prompt_id": str(i), "messages": m}
           for i, m in enumerate(sft_conversations(n_sft, seed))]
    _write_jsonl(folder / "sft.jsonl", sft)
    _write_jsonl(folder / "preferences.jsonl", preference_pairs(n_pairs, seed))
    return folder / "sft.jsonl", folder / "preferences.jsonl"
