"""The evaluation harness: a model under test, suites that score it item by item, resumable per-item
records, and the base/SFT/DPO table.

A suite turns items into records ({"id", ..., "correct"}) through `EvalModel`'s engine; the harness
keeps the records as JSONL beside the summary, so a rerun with the same model and settings skips items
already scored and a reader can see why a model scored what it did.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol


from ..checkpoint import load_model, weights_fingerprint
from ..engine import Engine
from ..files import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from ..progress import progress
from ..runtime import Runtime, setup
from ..tokenizer import Tokenizer
from .stats import (expected_chance_flags, item_value, mean_stderr, paired, per_instruction,
                    per_instruction_over_runs)


@dataclass
class EvalModel:
    name: str
    engine: Engine
    chat: bool  # prompt through the chat template (SFT/DPO) or as plain few-shot text (base)
    source: dict = field(default_factory=dict)

    @property
    def tok(self) -> Tokenizer:
        return self.engine.tok


def is_chat_folder(path: str | Path, adapter: str | None) -> bool:
    """Anything with an adapter, or a merged SFT/DPO model, is a chat model."""
    p = Path(path)
    if adapter or (p / "adapter_config.json").is_file():
        return True
    meta = p / "model.json"
    return meta.is_file() and json.loads(meta.read_text()).get("stage") == "merged"


def load_eval_model(path: str, adapter: str | None = None, chat: bool | None = None, name: str | None = None,
                    rt: Runtime | None = None, batch_size: int = 16) -> EvalModel:
    rt = rt or setup()
    model, tok = load_model(path, rt.device, adapter=adapter, merge_adapters=True)
    is_chat = is_chat_folder(path, adapter) if chat is None else chat
    source = {"model": str(path), "adapter": str(adapter) if adapter else None,
              "prompting": "chat" if is_chat else "few-shot",
              "weights": weights_fingerprint(path, adapter)}  # the record cache's key: content, not paths
    return EvalModel(name or Path(path).name, Engine(model, tok, rt, batch_size), is_chat, source)


class Suite(Protocol):
    name: str

    def items(self, limit: int | None) -> list[dict]: ...
    def settings(self) -> dict: ...
    def evaluate(self, model: EvalModel, items: list[dict]) -> list[dict]: ...
    def summarize(self, records: list[dict]) -> dict: ...


def stratified(items: list[dict], limit: int | None, key: str | None) -> list[dict]:
    """The first `limit` items, taken round-robin over `key` groups (all items when limit is None)."""
    if limit is None or limit >= len(items):
        return items
    if key is None:
        return items[:limit]
    groups: dict[Any, list[dict]] = {}
    for it in items:
        groups.setdefault(it[key], []).append(it)
    out, queues = [], [list(g) for g in groups.values()]
    while len(out) < limit:
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


def _settings_hash(model: EvalModel, suite: Suite) -> str:
    blob = json.dumps({"model": model.source, "suite": suite.name, "settings": suite.settings()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


_WARNED: set[tuple] = set()


def warn_budget(suite: str, budget: int, block: int, capped_from: int | None = None) -> None:
    """Once per suite and context: a generation budget that leaves the prompt less than half the context
    (lm-eval's rule keeps context[-(max_length - max_gen_toks):]), or a budget capped to fit at all."""
    key = (suite, budget, block, capped_from)
    if key in _WARNED or _rank_world()[0] != 0:
        return
    _WARNED.add(key)
    if capped_from is not None:
        print(f"note: {suite}: {capped_from:,} new tokens do not fit this model's {block:,}-token context: "
              f"capped to {budget:,} (lm-eval refuses a budget of the whole context; to compare with it, "
              f"pass --gen_kwargs max_gen_toks={budget})", file=sys.stderr)
    elif budget > block // 2:
        print(f"warning: {suite}: {budget:,} new tokens leave the prompt only {block - budget:,} of the "
              f"{block:,}-token context (cut from the left, as lm-eval does); --max-new-tokens lowers it",
              file=sys.stderr)


def run_suite(model: EvalModel, suite: Suite, records_path: Path, limit: int | None, chunk: int = 32
              ) -> tuple[dict, list[dict]]:
    """Score the suite's items (skipping those already in `records_path` for these settings); returns the
    summary and the records in item order (for paired comparisons between models).

    Under torchrun each rank scores every W-th remaining item; the records are gathered and rank 0 writes
    them.
    """
    key = _settings_hash(model, suite)
    rank, world = _rank_world()
    done: dict[str, dict] = {}
    for rec in read_jsonl(records_path):  # a torn last line (a killed run) is dropped and redone
        # an incomplete record (its judge failed) is redone: a judge outage must not become a result
        if "id" not in rec:
            raise ValueError(f"{records_path}: a record without 'id' (damaged): remove the file to score "
                             "the suite again")
        if rec.get("settings") == key and not rec.get("incomplete"):
            done[str(rec["id"])] = rec
    items = suite.items(limit)
    mine = [it for it in items if str(it["id"]) not in done][rank::world]
    t0 = time.time()
    new: list[dict] = []
    with progress(total=len(items), initial=len(done), desc=f"{model.name}/{suite.name}", unit="item",
                  disable=rank != 0) as bar:
        for i in range(0, len(mine), chunk):
            recs = suite.evaluate(model, mine[i: i + chunk])
            for r in recs:
                r["settings"] = key
            if world == 1:  # write as we go, so an interrupted run keeps its work
                _append_records(records_path, recs)
            new += recs
            bar.update(len(recs) * world)
    if world > 1:
        import torch.distributed as dist

        gathered: list[list[dict] | None] = [None] * world
        dist.all_gather_object(gathered, new)
        new = [r for part in gathered for r in (part or [])]
        if rank == 0:
            _append_records(records_path, new)
    done.update({str(r["id"]): r for r in new})
    records = [done[str(it["id"])] for it in items]
    summary = suite.summarize(records)
    summary.update(items=len(records), seconds=round(time.time() - t0, 2),
                   prompting=model.source["prompting"])
    if any("truncated" in r for r in records):  # prompts cut to fit the context: counted, never silent
        summary["truncated"] = sum(bool(r.get("truncated")) for r in records)
    values = [v for v in map(item_value, records) if v is not None]
    if values and (err := mean_stderr(values)) is not None:
        summary["stderr"] = err  # of the headline: every score in a table carries its error bar
    return summary, records


def _append_records(path: Path, records: list[dict]) -> None:
    append_jsonl(path, records)


def evaluate(model: EvalModel, suites: Iterable[Suite], out: str | Path, limit: int | None = None) -> dict:
    """Run suites; write `out` (summary JSON) and `<out stem>.<suite>.jsonl` (per-item records) beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict = {"model": model.source, "limit": limit, "suites": {}}
    records: dict[str, list[dict]] = {}
    main = _rank_world()[0] == 0
    for suite in suites:
        path = out.with_name(f"{out.stem}.{suite.name}.jsonl")
        results["suites"][suite.name], records[suite.name] = run_suite(model, suite, path, limit)
        if main:
            print(f"{model.name} {suite.name}: " + headline(suite.name, results["suites"][suite.name]))
    if main:
        atomic_write_json(out, results)
    return {**results, "records": records}  # the records stay out of the summary file (they are beside it)


HEADLINE = {"mmlu_pro": ("accuracy", "{:.1%}"), "mmlu_pro_category": ("accuracy", "{:.1%}"),
            "gsm8k": ("strict", "{:.1%}"), "ifeval": ("prompt_strict", "{:.1%}")}


def headline(suite: str, summary: dict) -> str:
    """The table cell: the headline score ± its standard error ("61.7% ± 2.8")."""
    key, fmt = HEADLINE.get(suite, ("score", "{:.2f}"))
    value, err = summary.get(key), summary.get("stderr")
    if not isinstance(value, (int, float)):
        return summary.get("display") or str(value)
    if err is None:
        return fmt.format(value)
    return fmt.format(value) + (f" ± {100 * err:.1f}" if "%" in fmt else f" ± {err:.2f}")


def compare_table(results: dict[str, dict], suites: list[str]) -> str:
    """Markdown table: one row per model (base, sft, dpo), one column per suite, scores ± stderr."""
    lines = ["| model | " + " | ".join(suites) + " |", "|---|" + "---:|" * len(suites)]
    for name, res in results.items():
        cells = [headline(s, res["suites"][s]) if s in res["suites"] else "n/a" for s in suites]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cut = [f"{s} {res['suites'][s]['truncated']:,} of {res['suites'][s]['items']:,} ({name})"
           for name, res in results.items() for s in suites if res["suites"].get(s, {}).get("truncated")]
    if cut:
        lines.append(f"\nPrompts cut from the left to fit the context (lm-eval's rule): {'; '.join(cut)}.")
    return "\n".join(lines) + "\n"


def comparisons(results: dict[str, dict], suites: list[str]) -> dict:
    """Each model against the one before it in the table (base→sft, sft→dpo): the paired difference of
    every suite's headline with a bootstrap 95% interval, and IFEval's per-instruction-type deltas."""
    names, out = list(results), {}
    for a, b in zip(names, names[1:]):
        ra, rb = results[a].get("records", {}), results[b].get("records", {})
        diffs = {s: paired(ra[s], rb[s]) for s in suites if s in ra and s in rb}
        out[f"{a}→{b}"] = {"paired": {s: d for s, d in diffs.items() if d is not None},
                           "per_instruction": per_instruction(ra["ifeval"], rb["ifeval"]) if "ifeval" in ra
                           and "ifeval" in rb else {}}
    return out


def comparisons_markdown(comp: dict) -> str:
    """The paired differences as markdown: one table of suites, one of instruction types per comparison."""
    parts = []
    for pair, c in comp.items():
        if c["paired"]:
            parts.append(f"**{pair}**, paired over the same items (95% bootstrap interval):\n\n"
                         "| suite | difference | 95% interval | items |\n|---|---:|---:|---:|")
            for s, d in c["paired"].items():
                scale, unit = (100, " pt") if s != "mt_bench" else (1, "")
                parts.append(f"| {s} | {scale * d['delta']:+.1f}{unit} | [{scale * d['low']:+.1f}, "
                             f"{scale * d['high']:+.1f}] | {d['items']} |")
            parts.append("")
        if c["per_instruction"]:
            a, b = pair.split("→")
            parts.append(f"IFEval per instruction type, {pair} (strict, same prompts):\n\n"
                         f"| instruction | n | {a} | {b} | difference ± stderr |\n|---|---:|---:|---:|---:|")
            for iid, r in c["per_instruction"].items():
                flag = " ⚠" if r["delta"] < -r["stderr"] - 1e-12 else ""
                parts.append(f"| {iid} | {r['n']} | {r['a']:.1%} | {r['b']:.1%} | "
                             f"{100 * r['delta']:+.1f} ± {100 * r['stderr']:.1f}{flag} |")
            parts.append("")
    return "\n".join(parts)


def trades_over_runs(runs: list[tuple[list[dict], list[dict]]], pair: str = "sft→dpo") -> tuple[str, dict]:
    """Did the second model trade an instruction type away, asked of several runs (world seeds) at once?

    Returns markdown and numbers: per type, the difference pooled over the runs with both standard errors
    (`per_instruction_over_runs`) and a ⚠ where it drops by more than either; then the count of (run, type)
    cells that drop by more than their own stderr next to the count sampling noise alone would give if each
    type's true difference were its pooled one (`expected_chance_flags`). A count near that yardstick is
    noise; a count well above it means some runs trade a type that others gain."""
    pooled = per_instruction_over_runs(runs)
    per_run = [per_instruction(a, b) for a, b in runs]
    lost = sum(v["delta"] < -v["stderr"] - 1e-12 for p in per_run for v in p.values())
    chance = expected_chance_flags([(pooled[k]["delta"], v["stderr"]) for p in per_run for k, v in p.items()])
    a, b = pair.split("→")
    lines = [f"IFEval per instruction type, {pair}, pooled over {len(runs)} runs (strict, each run's own "
             f"prompts):\n\n| instruction | n | {a} | {b} | difference ± stderr (prompts) "
             "| ± stderr (seeds) |\n|---|---:|---:|---:|---:|---:|"]
    flagged = []
    for iid, r in pooled.items():
        # the stricter of the two errors: a drop beyond either one counts as lost
        se = min(r["stderr"], r["seed_stderr"] if r["seed_stderr"] is not None else r["stderr"])
        if r["delta"] < -se - 1e-12:
            flagged.append(iid)
        seed_se = f"{100 * r['seed_stderr']:.1f}" if r["seed_stderr"] is not None else "—"
        lines.append(f"| {iid} | {r['n']} | {r['a']:.1%} | {r['b']:.1%} | {100 * r['delta']:+.1f} ± "
                     f"{100 * r['stderr']:.1f}{' ⚠' if iid in flagged else ''} | {seed_se} |")
    lines.append(f"\nTypes lost pooled (by more than a stderr): {len(flagged)}. Cells (run, type) lost by "
                 f"more than their own stderr: {lost} of {sum(len(p) for p in per_run)}; sampling noise "
                 f"alone would give {chance:.1f}.")
    return "\n".join(lines), {"pooled": pooled, "types_lost": flagged, "cells_lost": lost,
                              "cells_by_chance": chance}


def write_table(results: dict[str, dict], suites: list[str], out: str | Path) -> str:
    """table.md (scores ± stderr, then the paired differences) and table.json; returns the markdown."""
    comp = comparisons(results, suites)
    table = compare_table(results, suites)
    extra = comparisons_markdown(comp)
    out = Path(out)
    atomic_write_text(out.with_suffix(".md"), table + ("\n" + extra if extra else ""))
    atomic_write_json(out.with_suffix(".json"), {"scores": {name: r["suites"] for name, r in results.items()},
                                                 "comparisons": comp})
    return table
