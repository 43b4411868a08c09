"""MMLU-Pro (TIGER-Lab): 12,032 questions, up to 10 options A–J, 14 categories; ranked by log-likelihood.

Two prompt layouts, each under its own suite name so a table never mixes them:
- `mmlu_pro` (the default) is lm-evaluation-harness's `leaderboard_mmlu_pro`, the Open LLM Leaderboard v2's
  protocol: "{question}\nA. {option}\n…Answer:", the *first five rows of the validation split* as shots
  for every question (each followed by " {letter}", joined by blank lines), the log-likelihood of " A" … " J"
  after "Answer:", and an over-long prompt cut from the left to the context (as lm-eval's HF model does).
- `mmlu_pro_category` is our category-aware layout: a "multiple choice questions about {category}" header,
  "Question:"/"Options:" labels, shots from the same category, whole shots dropped until the prompt fits.
  The tiny world's SFT data is written in this layout, so the tiny preset evaluates with it.

`scoring="letter"`: the log-prob of each option letter right after "Answer:" — one forward per question
when every letter is a single token (GPT-2: " A" … " J"). `scoring="text"`: the length-normalised
log-likelihood of each option's text (for models too small to map an answer to its letter).
Chat models: in `mmlu_pro`, lm-eval's `--apply_chat_template --fewshot_as_multiturn` rendering (each shot a
user turn ending "Answer:" and an assistant turn holding its letter; the question a last user turn; "A" … "J"
scored as the assistant's first token). In `mmlu_pro_category`, the prompt up to "Answer:" is the user's turn
and the assistant's reply starts with "Answer:", then " A" … " J" are scored.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from ..chat import encode_chat
from ..data.mcq import LETTERS, format_question, header
from ..data.sources import DataError, iter_rows
from .harness import EvalModel, stratified

HUB = "TIGER-Lab/MMLU-Pro"


def load_split(data_dir: str | None, split: str) -> list[dict]:
    """Rows of a split from `data_dir/mmlu_pro/` (parquet preferred, else jsonl) or the hub."""
    if data_dir:
        folder = Path(data_dir) / "mmlu_pro"
        files = sorted(folder.glob(f"{split}-*.parquet")) or sorted(folder.glob(f"{split}*.jsonl"))
        if not files:
            raise DataError(f"{folder}: no {split} split (expected {split}-*.parquet or {split}.jsonl)")
        rows = iter_rows([str(f) for f in files])
    else:
        rows = iter_rows(HUB, split)
    out = []
    for row in rows:
        d = row.data
        for f in ("question", "options", "answer", "category"):
            if f not in d:
                raise DataError(f"{row.where()}: no {f!r} field")
        opts = [o for o in d["options"] if o is not None]
        if not 2 <= len(opts) <= 10 or d["answer"] not in LETTERS[: len(opts)]:
            raise DataError(f"{row.where('answer')}: answer {d['answer']!r} does not name one of "
                            f"{len(opts)} options")
        out.append({"id": d.get("question_id", row.index), "question": d["question"], "options": list(opts),
                    "answer": d["answer"], "category": d["category"]})
    return out


def leaderboard_text(item: dict) -> str:
    """leaderboard_mmlu_pro's question block: the question, "A. …" lines, "Answer:"."""
    opts = "".join(f"{string.ascii_uppercase[i]}. {o}\n" for i, o in enumerate(item["options"]))
    return f"{item['question']}\n{opts}Answer:"


@dataclass
class MMLUPro:
    data_dir: str | None = None
    shots: int = 5
    scoring: str = "letter"  # letter | text
    layout: str = "leaderboard"  # leaderboard (lm-eval's leaderboard_mmlu_pro) | category (ours)
    name: str = "mmlu_pro"

    def __post_init__(self):
        if self.scoring not in ("letter", "text"):
            raise ValueError(f"mmlu_pro scoring must be 'letter' or 'text', not {self.scoring!r}")
        if self.layout not in ("leaderboard", "category"):
            raise ValueError(f"mmlu_pro layout must be 'leaderboard' or 'category', not {self.layout!r}")
        self._val: dict[str, list[dict]] | None = None
        self._first: list[dict] | None = None

    def settings(self) -> dict:
        return {"shots": self.shots, "scoring": self.scoring, "layout": self.layout}

    def items(self, limit: int | None) -> list[dict]:
        return stratified(load_split(self.data_dir, "test"), limit, "category")

    def exemplars(self, category: str) -> list[dict]:
        if self._val is None:
            self._val = {}
            for it in load_split(self.data_dir, "validation"):
                self._val.setdefault(it["category"], []).append(it)
        return self._val.get(category, [])[: self.shots]

    def first_validation_rows(self) -> list[dict]:
        """lm-eval's `first_n` sampler: the same first rows of the validation split for every question."""
        if self._first is None:
            self._first = load_split(self.data_dir, "validation")[: self.shots]
        return self._first

    def prompt(self, model: EvalModel, item: dict) -> list[int]:
        return self._leaderboard_prompt(model, item) if self.layout == "leaderboard" else \
            self._category_prompt(model, item)

    def _leaderboard_prompt(self, model: EvalModel, item: dict) -> list[int]:
        """Shots and question as lm-eval renders them; the prompt's last `block` tokens (left truncation)."""
        return self._leaderboard_ids(model, item)[-model.engine.block:]

    def _leaderboard_ids(self, model: EvalModel, item: dict) -> list[int]:
        shots = self.first_validation_rows()
        if model.chat:  # lm-eval's --apply_chat_template --fewshot_as_multiturn: a turn pair per shot
            msgs = []
            for s in shots:
                msgs += [{"role": "user", "content": leaderboard_text(s)},
                         {"role": "assistant", "content": s["answer"]}]
            msgs.append({"role": "user", "content": leaderboard_text(item)})
            ids = encode_chat(msgs, model.tok, add_generation_prompt=True).ids
        else:
            text = "".join(f"{leaderboard_text(s)} {s['answer']}\n\n" for s in shots) + leaderboard_text(item)
            ids = model.tok.encode(text)
        return ids

    def _letter_prefix(self, model: EvalModel) -> str:
        """" A" after "Answer:" in text; in the chat layout lm-eval drops the target delimiter: "A" opens the
        assistant's reply."""
        return "" if model.chat and self.layout == "leaderboard" else " "

    def _category_prompt(self, model: EvalModel, item: dict) -> list[int]:
        """Few-shot prompt ending in "Answer:", dropping shots until it fits the context."""
        shots = self.exemplars(item["category"])
        room = model.engine.block - 1
        while True:
            ids = self._category_ids(model, item, shots)
            if len(ids) <= room or not shots:
                return ids[-room:]
            shots = shots[:-1]

    def _category_ids(self, model: EvalModel, item: dict, shots: list[dict]) -> list[int]:
        body = (header(item["category"]) + "".join(format_question(s, True) for s in shots)
                + format_question(item, False))
        if model.chat:  # the question as the user's turn; the reply starts with "Answer:"
            user = body[: -len("Answer:")].rstrip()
            return encode_chat([{"role": "user", "content": user}], model.tok,
                               add_generation_prompt=True).ids + model.tok.encode("Answer:")
        return model.tok.encode(body)

    def evaluate(self, model: EvalModel, items: list[dict]) -> list[dict]:
        prompts = [self.prompt(model, it) for it in items]
        full = [self._untruncated(model, it) for it in items]
        # what fits uncut: the leaderboard prompt's last `block` tokens; the category layout's shots are
        # dropped until the prompt leaves a position for the answer
        room = model.engine.block - (self.layout != "leaderboard")
        if self.scoring == "letter":
            scores = self._letter_scores(model, items, prompts)
        else:
            scores = self._text_scores(model, items, prompts)
        recs = []
        for it, sc, n in zip(items, scores, full):
            pred = LETTERS[max(range(len(sc)), key=sc.__getitem__)]
            recs.append({"id": it["id"], "category": it["category"], "gold": it["answer"], "pred": pred,
                         "correct": pred == it["answer"], "scores": [round(s, 4) for s in sc],
                         "n_options": len(it["options"]), "prompt_tokens": n, "truncated": n > room})
        return recs

    def _untruncated(self, model: EvalModel, item: dict) -> int:
        """The prompt's length before any cut (whole shots dropped, or its oldest tokens)."""
        if self.layout == "leaderboard":
            return len(self._leaderboard_ids(model, item))
        return len(self._category_ids(model, item, self.exemplars(item["category"])))

    def _letter_scores(self, model: EvalModel, items, prompts) -> list[list[float]]:
        letter_ids = [model.tok.encode(f"{self._letter_prefix(model)}{c}") for c in LETTERS]
        if all(len(t) == 1 for t in letter_ids):
            lp = model.engine.next_token_logprobs(prompts, [t[0] for t in letter_ids])
            return [lp[i, : len(it["options"])].tolist() for i, it in enumerate(items)]
        reqs = [(p, letter_ids[k]) for p, it in zip(prompts, items) for k in range(len(it["options"]))]
        return self._regroup(items, [s.logprob for s in model.engine.score(reqs)])

    def _text_scores(self, model: EvalModel, items, prompts) -> list[list[float]]:
        reqs = [(p, model.tok.encode(f"{self._letter_prefix(model)}{o}")) for p, it in zip(prompts, items)
                for o in it["options"]]
        return self._regroup(items, [s.logprob / s.n_tokens for s in model.engine.score(reqs)])

    @staticmethod
    def _regroup(items, flat: list[float]) -> list[list[float]]:
        out, k = [], 0
        for it in items:
            out.append(flat[k: k + len(it["options"])])
            k += len(it["options"])
        return out

    def summarize(self, records: list[dict]) -> dict:
        cats: dict[str, list[bool]] = {}
        for r in records:
            cats.setdefault(r["category"], []).append(r["correct"])
        return {"accuracy": sum(r["correct"] for r in records) / len(records),
                "random_baseline": sum(1 / r["n_options"] for r in records) / len(records),
                "per_category": {c: sum(v) / len(v) for c, v in sorted(cats.items())}}


@dataclass
class MMLUProCategory(MMLUPro):
    """Our category-aware layout, under its own name (see the module docstring)."""

    layout: str = "category"
    name: str = "mmlu_pro_category"
