"""GSM8K (openai/gsm8k "main", test, 1,319 problems): 8-shot chain of thought, greedy, exact match.

Prompt and scoring follow lm-evaluation-harness's gsm8k-cot: "Q: {question}\\nA: {target}" shots joined by
a blank line, generation stops at "Q:" or a blank line; "strict" takes the first "The answer is N." and
"flexible" the last number in the output; numbers are normalised (",", "$", a trailing "." or ".0").
Chat models get the shots as user/assistant turns and answer in their own turn.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..chat import encode_chat
from ..data.sources import DataError, iter_rows
from .harness import EvalModel, stratified

HUB = ("openai/gsm8k", "main")
EXEMPLARS_FILE = "gsm8k_cot_8shot_lm_eval_harness.jsonl"
STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
STOP = ["Q:", "\n\n"]


def normalize(num: str | None) -> str | None:
    """'1,234.00' → '1234', '$18' → '18', '7.' → '7'; None stays None."""
    if num is None:
        return None
    s = num.replace(",", "").replace("$", "").strip().rstrip(".")
    if re.fullmatch(r"-?\d+\.\d*", s):
        s = s.rstrip("0").rstrip(".")
    return s or None


def extract_strict(text: str) -> str | None:
    m = STRICT.search(text)
    return normalize(m.group(1)) if m else None


def extract_flexible(text: str) -> str | None:
    matches = FLEXIBLE.findall(text)
    if not matches:
        return None
    a, b = matches[-1]
    return normalize(a or b)


def gold_answer(solution: str) -> str:
    return normalize(solution.split("####")[-1].strip()) or ""


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
        out.append({"id": row.index, "question": row.data["question"], "gold": gold_answer(row.data["answer"])})
    return out


def load_exemplars(data_dir: str | None, n: int) -> tuple[list[dict], str]:
    """The Wei et al. CoT exemplars where available, else the first train problems (calculator notes removed)."""
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

    def prompt(self, model: EvalModel, item: dict) -> list[int]:
        shots = list(self.exemplars)
        room = model.engine.block - min(self.max_new_tokens, model.engine.block // 2)
        while True:
            if model.chat:
                msgs = []
                for s in shots:
                    msgs += [{"role": "user", "content": f"Q: {s['question']}"},
                             {"role": "assistant", "content": s["target"]}]
                msgs.append({"role": "user", "content": f"Q: {item['question']}"})
                ids = encode_chat(msgs, model.tok, add_generation_prompt=True).ids
            else:
                text = "".join(f"Q: {s['question']}\nA: {s['target']}\n\n" for s in shots)
                ids = model.tok.encode(text + f"Q: {item['question']}\nA:")
            if len(ids) <= room or not shots:
                return ids[-room:]
            shots = shots[:-1]

    def evaluate(self, model: EvalModel, items: list[dict]) -> list[dict]:
        prompts = [self.prompt(model, it) for it in items]
        outs = model.engine.generate(prompts, self.max_new_tokens, temperature=0.0, stop=STOP)
        return [self.record(it, model.tok.decode(o)) for it, o in zip(items, outs)]

    @staticmethod
    def record(item: dict, output: str) -> dict:
        strict, flexible = extract_strict(output), extract_flexible(output)
        return {"id": item["id"], "question": item["question"], "output": output, "gold": item["gold"],
                "strict": strict, "flexible": flexible, "correct": strict == item["gold"],
                "correct_flexible": flexible == item["gold"]}

    def summarize(self, records: list[dict]) -> dict:
        n = len(records)
        return {"strict": sum(r["correct"] for r in records) / n,
                "flexible": sum(r["correct_flexible"] for r in records) / n}
