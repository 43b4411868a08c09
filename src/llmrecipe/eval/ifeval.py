"""IFEval: 541 prompts with verifiable instructions, scored by the benchmark's own rules (rules.py)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..chat import encode_chat
from ..data.sources import DataError, iter_jsonl, iter_rows
from .harness import EvalModel, stratified, warn_budget
from ..ifeval_rules import RULES, verdicts

HUB = "google/IFEval"


def load_items(data_dir: str | None) -> list[dict]:
    if data_dir:
        rows = iter_rows(str(Path(data_dir) / "ifeval" / "input_data.jsonl"))
    else:
        rows = iter_rows(HUB, "train")
    out = []
    for row in rows:
        for f in ("key", "prompt", "instruction_id_list", "kwargs"):
            if f not in row.data:
                raise DataError(f"{row.where()}: no {f!r} field")
        unknown = [i for i in row.data["instruction_id_list"] if i not in RULES]
        if unknown:
            raise DataError(f"{row.where('instruction_id_list')}: unknown instruction {unknown[0]!r}")
        out.append({"id": row.data["key"], "prompt": row.data["prompt"],
                    "instruction_id_list": list(row.data["instruction_id_list"]),
                    "kwargs": list(row.data["kwargs"])})
    return out


def score(item: dict, response: str) -> dict:
    """A record with strict and loose verdicts per instruction."""
    strict = verdicts(item["instruction_id_list"], item["kwargs"], response, loose=False)
    loose = verdicts(item["instruction_id_list"], item["kwargs"], response, loose=True)
    return {"id": item["id"], "prompt": item["prompt"], "response": response,
            "instruction_id_list": item["instruction_id_list"], "strict": strict, "loose": loose,
            "correct": all(strict), "correct_loose": all(loose)}


def summarize(records: list[dict]) -> dict:
    """The benchmark's four numbers, and accuracy per instruction type."""
    out: dict = {}
    for mode in ("strict", "loose"):
        out[f"prompt_{mode}"] = sum(all(r[mode]) for r in records) / len(records)
        out[f"instruction_{mode}"] = sum(sum(r[mode]) for r in records) / sum(len(r[mode]) for r in records)
    per: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        for iid, ok in zip(r["instruction_id_list"], r["strict"]):
            per[iid].append(ok)
    out["per_instruction_strict"] = {k: sum(v) / len(v) for k, v in sorted(per.items())}
    return out


def report(summary: dict) -> str:
    return (f"prompt-level strict {summary['prompt_strict']:.2%}, instruction-level strict "
            f"{summary['instruction_strict']:.2%}, prompt-level loose {summary['prompt_loose']:.2%}, "
            f"instruction-level loose {summary['instruction_loose']:.2%}")


@dataclass
class IFEval:
    data_dir: str | None = None
    max_new_tokens: int = 1280
    name: str = "ifeval"

    def settings(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens}

    def items(self, limit: int | None) -> list[dict]:
        return stratified(load_items(self.data_dir), limit, None)

    def prompt(self, model: EvalModel, item: dict) -> list[int]:
        if model.chat:
            user = [{"role": "user", "content": item["prompt"]}]
            return encode_chat(user, model.tok, add_generation_prompt=True).ids
        return model.tok.encode(item["prompt"])  # lm-eval's ifeval context: the prompt, nothing added

    def evaluate(self, model: EvalModel, items: list[dict]) -> list[dict]:
        # IFEval's 1,280 new tokens exceed GPT-2's whole context: capped at half of it, and said
        block = model.engine.block
        new = min(self.max_new_tokens, block // 2)
        warn_budget(self.name, new, block, self.max_new_tokens if new < self.max_new_tokens else None)
        prompts = [self.prompt(model, it) for it in items]
        outs = model.engine.generate(prompts, new, temperature=0.0)
        return [score(it, model.tok.decode(o)) | {"prompt_tokens": len(p), "truncated": len(p) > block - new}
                for it, o, p in zip(items, outs, prompts)]

    def summarize(self, records: list[dict]) -> dict:
        return summarize(records)


def score_file(path: str | Path, data_dir: str | None) -> tuple[dict, list[dict]]:
    """Score an official-format responses file ({"prompt", "response"} per line) against the benchmark."""
    by_prompt = {it["prompt"]: it for it in load_items(data_dir)}
    records = []
    for row in iter_jsonl(Path(path)):  # row.index is the file's line number
        r, where = row.data, f"{path}, line {row.index}"
        for field in ("prompt", "response"):
            if not isinstance(r.get(field), str):
                raise DataError(f"{where}: missing or non-string field {field!r}")
        if r["prompt"] not in by_prompt:
            raise DataError(f"{where}: prompt is not in the IFEval benchmark: {r['prompt'][:60]!r}")
        records.append(score(by_prompt[r["prompt"]], r["response"]))
    if not records:
        raise DataError(f"{path}: no responses")
    return summarize(records), records
