"""Error bars for the table: standard errors of a score, and paired bootstrap intervals of a difference.

Two models scored on the same items are compared item by item (a paired test): most items get the same
verdict from both, so the difference is known far better than the two scores' separate errors suggest.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np


def mean_stderr(values: list[float]) -> float | None:
    """Standard error of a mean: sample standard deviation (n - 1) / sqrt(n), as lm-evaluation-harness
    prints `± stderr` for accuracy-like metrics. None for fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def paired_bootstrap(a: list[float], b: list[float], resamples: int = 10_000, seed: int = 0) -> dict:
    """Mean of b - a over the same items, with a 95% percentile interval from resampling items.
    The seed is fixed so that a table is reproducible to the digit."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired comparison needs the same non-empty items ({len(a)} vs {len(b)})")
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    means = d[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"delta": float(d.mean()), "low": float(lo), "high": float(hi), "items": len(d),
            "stderr": mean_stderr(d.tolist())}


def item_value(record: dict) -> float | None:
    """The per-item number a suite's headline averages: 1/0 for a correct verdict (MMLU-Pro, GSM8K strict,
    IFEval prompt-level strict), the mean judge score for MT-Bench; None when the item has no value."""
    if record.get("correct") is not None:
        return float(record["correct"])
    scores = [s for s in record.get("scores") or [] if isinstance(s, (int, float))]
    return sum(scores) / len(scores) if scores and "judgments" in record else None


def paired(records_a: list[dict], records_b: list[dict]) -> dict | None:
    """The paired difference (b - a) of two models' headline over the items both have a value for."""
    by_id = {str(r["id"]): item_value(r) for r in records_a}
    pairs = [(by_id[str(r["id"])], item_value(r)) for r in records_b if by_id.get(str(r["id"])) is not None
             and item_value(r) is not None]
    if not pairs:
        return None
    return paired_bootstrap([x for x, _ in pairs], [y for _, y in pairs])


def per_instruction(records_a: list[dict], records_b: list[dict]) -> dict[str, dict]:
    """IFEval per instruction type: how often each model followed it (strict) on the same prompts, and the
    paired difference with its standard error — a type traded away for another shows here at a glance."""
    a_by_id = {str(r["id"]): r for r in records_a}
    rows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for rb in records_b:
        ra = a_by_id.get(str(rb["id"]))
        if ra is None:
            continue
        for iid, x, y in zip(rb["instruction_id_list"], ra["strict"], rb["strict"]):
            rows[iid].append((float(x), float(y)))
    out = {}
    for iid, xy in sorted(rows.items()):
        d = [y - x for x, y in xy]
        out[iid] = {"n": len(xy), "a": sum(x for x, _ in xy) / len(xy), "b": sum(y for _, y in xy) / len(xy),
                    "delta": sum(d) / len(d), "stderr": mean_stderr(d) or 0.0}
    return out


def per_instruction_over_runs(runs: list[tuple[list[dict], list[dict]]]) -> dict[str, dict]:
    """`per_instruction` pooled over independent runs (world seeds), each pair of models on its own prompts.

    Why pool: one run scores ~30-45 prompts per type, so a type's difference has a stderr of 4-8 points, and a
    type whose true difference is zero drops by more than one stderr in ~16% of runs (Φ(-1)) -- over 14 types
    and 5 seeds that flags ~11 cells by chance alone. The recipe's question, "does DPO trade type t away?",
    is asked of all its runs at once. Two errors are given: `stderr` over every (prompt, instruction) row of
    all runs (these models, prompts as the random unit), and `seed_stderr` from the spread of the runs' own
    differences (the recipe, seeds as the random unit; None for fewer than two runs)."""
    pooled_a, pooled_b, per_run = [], [], []
    for k, (a, b) in enumerate(runs):
        # ids are only unique within a run: tag them so that each prompt pairs with its own run's answer
        pooled_a += [{**r, "id": f"{k}:{r['id']}"} for r in a]
        pooled_b += [{**r, "id": f"{k}:{r['id']}"} for r in b]
        per_run.append(per_instruction(a, b))
    out = per_instruction(pooled_a, pooled_b)
    for iid, r in out.items():
        deltas = [p[iid]["delta"] for p in per_run if iid in p]
        r["runs"] = len(deltas)
        r["seed_stderr"] = mean_stderr(deltas)
    return out


def expected_chance_flags(cells: list[tuple[float, float]]) -> float:
    """How many of these (true difference, stderr) cells would show a drop of more than one stderr by
    sampling noise alone: Σ P(d̂ < -se) = Σ Φ(-1 - μ/se), with d̂ ~ Normal(μ, se²). The yardstick for a
    per-run, per-type count of "lost" cells: a count near it is noise, one well above it is a trade."""
    return sum(0.5 * math.erfc((1 + mu / se) / math.sqrt(2)) for mu, se in cells if se > 0)
