"""MT-Bench (FastChat's llm_judge): 80 two-turn questions in 8 categories, judged by a stronger model.

Answers: both turns through the chat template, the second conditioned on the model's own first answer;
temperature per category as FastChat's (writing/roleplay 0.7, stem/humanities 0.1, the rest greedy).
Single grading scores each turn 1–10 from "[[N]]" with the benchmark's judge prompts (reference-guided
for math, reasoning and coding); the table's column is the mean over both turns. Pairwise mode judges
each pair in both orders; a verdict that flips with the order counts as a tie.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..chat import encode_chat
from ..data.sources import DataError, iter_rows
from .harness import EvalModel, stratified
from .judge import Judge, JudgeError

TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
               "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
NEED_REF = {"math", "reasoning", "coding"}
SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
NO_JUDGE = "n/a (no judge)"
NO_JUDGE_HINT = ("MT-Bench needs a judge: --judge-model M with OPENAI_API_KEY set, or --judge-url URL "
                 "--judge-model M")


def load_questions(data_dir: str | None, question_file: str | None = None) -> list[dict]:
    default = Path(data_dir) / "mt_bench" / "question.jsonl" if data_dir else None
    path = Path(question_file) if question_file else default
    if path is None:
        raise DataError("MT-Bench questions: give --data-dir (holding mt_bench/question.jsonl) or a question "
                        "file")
    out = []
    for row in iter_rows(str(path)):
        d = row.data
        if not isinstance(d.get("turns"), list) or len(d["turns"]) != 2 or "category" not in d:
            raise DataError(f"{row.where('turns')}: expected two turns and a category")
        out.append({"id": d["question_id"], "category": d["category"], "turns": d["turns"]})
    return out


def load_references(folder: Path) -> dict:
    f = folder / "reference_answer" / "gpt-4.jsonl"
    if not f.is_file():
        return {}
    return {r.data["question_id"]: r.data["choices"][0]["turns"] for r in iter_rows(str(f))}


def load_templates(folder: Path) -> dict[str, dict]:
    f = folder / "judge_prompts.jsonl"
    if not f.is_file():
        raise DataError(f"{f}: MT-Bench judge prompts not found")
    return {r.data["name"]: r.data for r in iter_rows(str(f))}


def answer(model: EvalModel, question: dict, max_new_tokens: int, temperature: float | None) -> list[str]:
    """Both turns; the second sees the model's own first answer."""
    temp = TEMPERATURE.get(question["category"], 0.7) if temperature is None else temperature
    msgs: list[dict] = []
    answers = []
    for turn in question["turns"]:
        msgs.append({"role": "user", "content": turn})
        ids = encode_chat(msgs, model.tok, add_generation_prompt=True).ids
        budget = min(max_new_tokens, model.engine.block // 2)
        out = model.engine.generate([ids], budget, temperature=temp, seed=0)[0]
        text = model.tok.decode(out).strip()
        answers.append(text)
        msgs.append({"role": "assistant", "content": text})
    return answers


def parse_score(text: str) -> float | None:
    m = SCORE.search(text) or SCORE_BACKUP.search(text)
    return float(m.group(1)) if m else None


def parse_pair(text: str) -> str | None:
    if "[[A]]" in text:
        return "A"
    if "[[B]]" in text:
        return "B"
    if "[[C]]" in text:
        return "tie"
    return None


def single_prompt(tpl: dict, q: dict, answers: list[str], ref: list[str] | None, turn: int) -> str:
    fields = {"question": q["turns"][0], "answer": answers[0], "question_1": q["turns"][0],
              "question_2": q["turns"][1], "answer_1": answers[0], "answer_2": answers[1]}
    if ref:
        fields.update(ref_answer_1=ref[0], ref_answer_2=ref[1] if len(ref) > 1 else "")
    return tpl["prompt_template"].format(**fields)


def pair_prompt(tpl: dict, q: dict, a: list[str], b: list[str], ref: list[str] | None) -> str:
    fields = {"question": q["turns"][0], "answer_a": a[0], "answer_b": b[0], "question_1": q["turns"][0],
              "question_2": q["turns"][1], "answer_a_1": a[0], "answer_a_2": a[1], "answer_b_1": b[0],
              "answer_b_2": b[1]}
    if ref:
        fields.update(ref_answer_1=ref[0], ref_answer_2=ref[1] if len(ref) > 1 else "")
    return tpl["prompt_template"].format(**fields)


def template_name(kind: str, category: str, turn: int, has_ref: bool) -> str:
    math = "-math" if category in NEED_REF and has_ref else ""
    base = {"single": f"single{math}-v1", "pair": f"pair{math}-v1" if math else "pair-v2"}[kind]
    return base + ("-multi-turn" if turn == 2 else "")


@dataclass
class MTBench:
    data_dir: str | None = None
    judge: Judge | None = None
    max_new_tokens: int = 1024
    temperature: float | None = None  # None: per category, as FastChat
    name: str = "mt_bench"
    folder: Path = field(init=False)

    def __post_init__(self):
        self.folder = Path(self.data_dir) / "mt_bench" if self.data_dir else Path(".")

    def settings(self) -> dict:
        return {"judge": self.judge.model if self.judge else None,
                "judge_url": self.judge.url if self.judge else None, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature}

    @property
    def active(self) -> bool:
        return self.judge is not None and self.judge.configured

    def items(self, limit: int | None) -> list[dict]:
        if not self.active:
            return []
        return stratified(load_questions(self.data_dir), limit, "category")

    def evaluate(self, model: EvalModel, items: list[dict]) -> list[dict]:
        templates, refs = load_templates(self.folder), load_references(self.folder)
        answers = [answer(model, q, self.max_new_tokens, self.temperature) for q in items]
        requests = []
        for q, ans in zip(items, answers):
            ref = refs.get(q["id"])
            for turn in (1, 2):
                tpl = templates[template_name("single", q["category"], turn, ref is not None)]
                requests.append((tpl["name"], tpl["system_prompt"], single_prompt(tpl, q, ans, ref, turn)))
        replies = self.judge.ask_many(requests)
        recs = []
        for i, (q, ans) in enumerate(zip(items, answers)):
            scores, judgments = [], []
            for reply in replies[2 * i: 2 * i + 2]:
                text = str(reply) if isinstance(reply, JudgeError) else reply
                scores.append(None if isinstance(reply, JudgeError) else parse_score(reply))
                judgments.append(text)
            failed = sum(isinstance(r, JudgeError) for r in replies[2 * i: 2 * i + 2])
            recs.append({"id": q["id"], "category": q["category"], "answers": ans, "judgments": judgments,
                         "scores": scores, "correct": None, "judge_failed": failed,
                         # a judge failure is not a verdict: the harness redoes incomplete records on a rerun
                         "incomplete": failed > 0})
        return recs

    def summarize(self, records: list[dict]) -> dict:
        if not self.active:
            return {"display": NO_JUDGE, "hint": NO_JUDGE_HINT}
        scores = [s for r in records for s in r["scores"] if s is not None]
        failed = sum(r.get("judge_failed", 0) for r in records)  # no verdict: neither a score nor unparseable
        unparseable = sum(s is None for r in records for s in r["scores"]) - failed
        mean = sum(scores) / len(scores) if scores else None
        per_turn = [[r["scores"][t] for r in records if r["scores"][t] is not None] for t in (0, 1)]
        display = f"{mean:.2f}" if mean is not None else f"n/a ({unparseable} unparseable)"
        if failed:
            display = (f"{display if mean is not None else 'n/a'} (judge failed on {failed} of "
                       f"{2 * len(records)} judgments: rerun to judge them)")
        return {"score": mean, "turn_1": sum(per_turn[0]) / len(per_turn[0]) if per_turn[0] else None,
                "turn_2": sum(per_turn[1]) / len(per_turn[1]) if per_turn[1] else None,
                "unparseable": unparseable, "judge_failed": failed, "judge": self.judge.model,
                "display": display}


def pairwise(a: EvalModel, b: EvalModel, judge: Judge, data_dir: str, limit: int | None = None,
             max_new_tokens: int = 1024) -> dict:
    """Win/tie/loss of `a` against `b`, each (question, turn) judged in both orders."""
    folder = Path(data_dir) / "mt_bench"
    templates, refs = load_templates(folder), load_references(folder)
    questions = stratified(load_questions(data_dir), limit, "category")
    ans_a = [answer(a, q, max_new_tokens, None) for q in questions]
    ans_b = [answer(b, q, max_new_tokens, None) for q in questions]
    requests, index = [], []
    for qi, q in enumerate(questions):
        ref = refs.get(q["id"])
        for turn in (1, 2):
            tpl = templates[template_name("pair", q["category"], turn, ref is not None)]
            for first, second in ((ans_a[qi], ans_b[qi]), (ans_b[qi], ans_a[qi])):  # both orders
                requests.append((tpl["name"], tpl["system_prompt"], pair_prompt(tpl, q, first, second, ref)))
            index.append((q["id"], turn))
    replies = judge.ask_many(requests)
    errors = [r for r in replies if isinstance(r, JudgeError)]
    if len(errors) == len(replies):  # nothing was judged: an error, not a table of ties
        raise ValueError(f"every MT-Bench judgment failed ({errors[0]})")
    tally = {"win": 0, "tie": 0, "loss": 0, "inconsistent": 0, "unparseable": 0, "judge_failed": 0}
    details = []
    for k, (qid, turn) in enumerate(index):
        pair = replies[2 * k: 2 * k + 2]
        if any(isinstance(r, JudgeError) for r in pair):  # no verdict: counted apart, never as a tie
            tally["judge_failed"] += 1
            details.append({"question_id": qid, "turn": turn, "order_ab": None, "order_ba": None,
                            "outcome": "judge failed"})
            continue
        g1, g2 = (parse_pair(r) for r in pair)
        if g1 is None or g2 is None:
            tally["unparseable"] += 1
        g2_for_a = {"A": "B", "B": "A", "tie": "tie"}.get(g2) if g2 else None  # undo the swap
        if g1 is not None and g1 == g2_for_a:
            outcome = {"A": "win", "B": "loss", "tie": "tie"}[g1]
        else:
            outcome = "tie"
            if g1 is not None and g2 is not None:
                tally["inconsistent"] += 1
        tally[outcome] += 1
        details.append({"question_id": qid, "turn": turn, "order_ab": g1, "order_ba": g2, "outcome": outcome})
    return {"a": a.name, "b": b.name, "judge": judge.model, **tally, "comparisons": len(index),
            "details": details}
