"""GSM8K (openai/gsm8k "main", test, 1,319 problems): 8-shot chain of thought, greedy, exact match.

Scored exactly as lm-evaluation-harness's `gsm8k_cot` (v3): "Q: {question}\\nA: {target}" shots joined by a
blank line; generation stops at "Q:", "</s>" or "<|im_end|>" (and the end-of-text token), not at a blank
line; "strict" is the first "The answer is N." capture, "flexible" the last number-like string; before the
exact match, prediction and gold each lose every "," and "$", anything up to "#### ", and one final "."
(`regexes_to_ignore`), and are lower-cased. So "The answer is 3.0." scores 3.0 ≠ 3, as lm-eval scores it:
a column labelled GSM8K means what it means in the Open LLM Leaderboard and in papers. Chat models get the
shots as user/assistant turns and answer in their own turn, as lm-eval renders them with
`--apply_chat_template --fewshot_as_multiturn` (cross-checked).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..chat import encode_chat
from ..data.sources import DataError, iter_rows
from .harness import EvalModel, stratified, warn_budget

HUB = ("openai/gsm8k", "main")
EXEMPLARS_FILE = "gsm8k_cot_8shot_lm_eval_harness.jsonl"
STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
STOP = ["Q:", "</s>", "<|im_end|>"]
INVALID = "[invalid]"  # what lm-eval's regex filter returns when nothing matches
# applied in this order to both sides of the comparison, then lower-casing (gsm8k_cot's metric_list)
IGNORE = [re.compile(r","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$")]


def normalize(text: str) -> str:
    """gsm8k_cot's comparison form: '$1,234.' → '1234', '3.0.' → '3.0', '#### 18' → '18'."""
    for pattern in IGNORE:
        text = pattern.sub("", text)
    return text.lower()


def _select(pattern: re.Pattern, text: str, which: int) -> str:
    """lm-eval's regex filter: all matches, pick one, a tuple of groups gives its first non-empty group."""
    matches = pattern.findall(text)
    if not matches:
        return INVALID
    m = matches[which]
    if isinstance(m, tuple):
        m = next((g for g in m if g), INVALID)
    return m.strip()


def extract_strict(text: str) -> str:
    return _select(STRICT, text, 0)


def extract_flexible(text: str) -> str:
    return _select(FLEXIBLE, text, -1)


def gold_answer(solution: str) -> str:
    """gsm8k_cot's target: the text after the last '####', stripped (normalised only when compared)."""
    return solution.split("####")[-1].strip()


def _rows(data_dir: str | None, split: str):
    if data_dir:
        f = Path(data_dir) / "gsm8k" / f"{split}.jsonl"
        if not f.is_file():
            raise DataError(f"{f}: GSM8K {split} file not found")
        return iter_rows(str(f))
    return iter_rows(HUB[0], split, HUB[1])


def load_items(data_dir: str | None) -> list[dict]:
    out = []
    for row in _rows(data_dir, "test"):
        for f in ("question", "answer"):
            if f not in row.data:
                raise DataError(f"{row.where()}: no {f!r} field")
        if "####" not in row.data["answer"]:
            raise DataError(f"{row.where('answer')}: no '#### N' final answer")
        out.append({"id": row.index, "question": row.data["question"],
                    "gold": gold_answer(row.data["answer"])})
    return out


def load_exemplars(data_dir: str | None, n: int) -> tuple[list[dict], str]:
    """The Wei et al. CoT exemplars where available, else the first train problems (calculator notes
    removed)."""
    if data_dir and (Path(data_dir) / "gsm8k" / EXEMPLARS_FILE).is_file():
        rows = iter_rows(str(Path(data_dir) / "gsm8k" / EXEMPLARS_FILE))
        return [{"question": r.data["question"], "target": r.data["target"]} for r in rows][:n], "wei-cot"
    shots = []
    for row in _rows(data_dir, "train"):
        if len(shots) == n:
            break
        work, _, final = row.data["answer"].partition("####")
        work = re.sub(r"<<[^>]*>>", "", work).strip().replace("\n", " ")
        shots.append({"question": row.data["question"], "target": f"{work} The answer is {final.strip()}."})
    return shots, "train-first-n"


@dataclass
class GSM8K:
    data_dir: str | None = None
    shots: int = 8
    max_new_tokens: int = 256
    name: str = "gsm8k"

    def __post_init__(self):
        self._exemplars: tuple[list[dict], str] | None = None

    @property
    def exemplars(self) -> list[dict]:
        if self._exemplars is None:
            self._exemplars = load_exemplars(self.data_dir, self.shots)
        return self._exemplars[0]

    def settings(self) -> dict:
        return {"shots": self.shots, "max_new_tokens": self.max_new_tokens,
                "exemplars": load_exemplars(self.data_dir, self.shots)[1] if self._exemplars is None
                else self._exemplars[1]}

    def items(self, limit: int | None) -> list[dict]:
        return stratified(load_items(self.data_dir), limit, None)

    def room(self, model: EvalModel) -> int:
        """The prompt's share of the context: lm-eval's HF model keeps context[-(max_length - max_gen_toks):]
        (as our engine does: the budget first, then the prompt's last tokens)."""
        return model.engine.block - min(self.max_new_tokens, model.engine.block - 1)

    def prompt(self, model: EvalModel, item: dict) -> list[int]:
        """All shots, then the question, cut from the left to `room` (lm-eval's truncation)."""
        return self.full_prompt(model, item)[-self.room(model):]

    def full_prompt(self, model: EvalModel, item: dict) -> list[int]:
        if model.chat:
            msgs = []
            # lm-eval's --apply_chat_template --fewshot_as_multiturn: each shot's "Q: …\nA:" a user turn, its
            # target the assistant's; the question a last user turn, answered in the assistant's own turn
            for s in self.exemplars:
                msgs += [{"role": "user", "content": f"Q: {s['question']}\nA:"},
                         {"role": "assistant", "content": s["target"]}]
            msgs.append({"role": "user", "content": f"Q: {item['question']}\nA:"})
            ids = encode_chat(msgs, model.tok, add_generation_prompt=True).ids
        else:
            text = "".join(f"Q: {s['question']}\nA: {s['target']}\n\n" for s in self.exemplars)
            ids = model.tok.encode(text + f"Q: {item['question']}\nA:")
        return ids

    def evaluate(self, model: EvalModel, items: list[dict]) -> list[dict]:
        warn_budget(self.name, self.max_new_tokens, model.engine.block)
        full, room = [self.full_prompt(model, it) for it in items], self.room(model)
        outs = model.engine.generate([p[-room:] for p in full], self.max_new_tokens, temperature=0.0,
                                     stop=STOP)
        return [self.record(it, model.tok.decode(o)) | {"prompt_tokens": len(p), "truncated": len(p) > room}
                for it, o, p in zip(items, outs, full)]

    @staticmethod
    def record(item: dict, output: str) -> dict:
        strict, flexible, gold = extract_strict(output), extract_flexible(output), normalize(item["gold"])
        return {"id": item["id"], "question": item["question"], "output": output, "gold": item["gold"],
                "strict": strict, "flexible": flexible, "correct": normalize(strict) == gold,
                "correct_flexible": normalize(flexible) == gold}

    def summarize(self, records: list[dict]) -> dict:
        n = len(records)
        return {"strict": sum(r["correct"] for r in records) / n,
                "flexible": sum(r["correct_flexible"] for r in records) / n}
