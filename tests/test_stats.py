"""Error bars: the standard error lm-evaluation-harness prints, and the paired bootstrap of a difference."""
import math
import random

import pytest

from llmrecipe.eval.harness import comparisons_markdown, headline, trades_over_runs
from llmrecipe.eval.stats import (expected_chance_flags, mean_stderr, paired, paired_bootstrap,
                                  per_instruction, per_instruction_over_runs)


def test_stderr_of_an_accuracy_is_the_sample_binomial_formula():
    for n, k in ((300, 180), (60, 59), (2, 1)):
        values = [1.0] * k + [0.0] * (n - k)
        p = k / n
        assert mean_stderr(values) == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)), rel=1e-12)
    assert mean_stderr([1.0]) is None and mean_stderr([0.5, 0.5, 0.5]) == 0.0
    assert headline("ifeval", {"prompt_strict": 0.6, "stderr": 0.0283}) == "60.0% ± 2.8"
    assert headline("mt_bench", {"score": 6.125, "stderr": 0.31, "display": "6.12"}) == "6.12 ± 0.31"
    assert headline("mt_bench", {"display": "n/a (no judge)"}) == "n/a (no judge)"


def test_paired_bootstrap_interval():
    a = [float(i % 2) for i in range(200)]
    assert paired_bootstrap(a, [x + 1 for x in a]) == pytest.approx(
        {"delta": 1.0, "low": 1.0, "high": 1.0, "items": 200, "stderr": 0.0})
    rng = random.Random(0)  # 300 items, b right on 20% more of them: the interval is delta ± 1.96 stderr
    a = [float(rng.random() < 0.5) for _ in range(300)]
    b = [1.0 if rng.random() < 0.2 else x for x in a]
    r = paired_bootstrap(a, b)
    assert r["low"] < r["delta"] < r["high"] and r["low"] > 0
    assert r["high"] - r["low"] == pytest.approx(2 * 1.96 * r["stderr"], rel=0.1)
    assert paired_bootstrap(a, b) == r  # seeded: the same table every time
    with pytest.raises(ValueError, match="same non-empty items"):
        paired_bootstrap(a, b[:-1])


def test_paired_records_and_per_instruction_deltas():
    ra = [{"id": i, "correct": i % 2 == 0, "instruction_id_list": ["x", "y"], "strict": [True, i % 2 == 0]}
          for i in range(10)]
    rb = [{"id": i, "correct": True, "instruction_id_list": ["x", "y"], "strict": [i < 5, True]}
          for i in reversed(range(10))]  # matched by id, not by position
    assert paired(ra, rb)["delta"] == pytest.approx(0.5)
    per = per_instruction(ra, rb)
    assert per["x"]["a"] == 1.0 and per["x"]["b"] == 0.5 and per["x"]["delta"] == pytest.approx(-0.5)
    assert per["y"]["delta"] == pytest.approx(0.5) and per["y"]["n"] == 10
    md = comparisons_markdown({"sft→dpo": {"paired": {"ifeval": paired(ra, rb)}, "per_instruction": per}})
    assert "| x | 10 | 100.0% | 50.0% | -50.0 ± 16.7 ⚠ |" in md and "| ifeval | +50.0 pt |" in md


def test_per_instruction_pooled_over_runs_pairs_each_prompt_with_its_own_run():
    """Two runs reuse the same prompt ids: pooling must not pair run 0's SFT answer with run 1's DPO answer.
    Run 0 loses x on all 4 prompts, run 1 gains it on all 4: pooled, x is unchanged and its stderr is that of
    8 values of ±1; the seed-level stderr is the spread of the two runs' own differences (-1, +1)."""
    def rec(i, x):
        return {"id": i, "instruction_id_list": ["x"], "strict": [x]}
    run0 = ([rec(i, True) for i in range(4)], [rec(i, False) for i in range(4)])
    run1 = ([rec(i, False) for i in range(4)], [rec(i, True) for i in range(4)])
    pooled = per_instruction_over_runs([run0, run1])["x"]
    assert pooled["n"] == 8 and pooled["a"] == 0.5 and pooled["delta"] == 0.0 and pooled["runs"] == 2
    assert pooled["stderr"] == pytest.approx(mean_stderr([-1.0] * 4 + [1.0] * 4), rel=1e-12)
    assert pooled["seed_stderr"] == pytest.approx(1.0, rel=1e-12)  # sd of (-1, +1) is sqrt(2), / sqrt(2)
    # concatenating the runs without tagging would pair by id across runs: the helper is not that
    naive = per_instruction(run0[0] + run1[0], run0[1] + run1[1])["x"]
    assert naive["delta"] == pytest.approx(0.5)  # every DPO answer against run 1's SFT answers
    assert per_instruction_over_runs([run0])["x"]["seed_stderr"] is None
    # the report: x gained by one run and lost by the other is not lost pooled, but shows as a lost cell
    md, r = trades_over_runs([run0, run1])
    assert r["types_lost"] == [] and r["cells_lost"] == 1 and "⚠" not in md
    lossy = ([rec(i, i < 3) for i in range(4)], [rec(i, False) for i in range(4)])  # 3 of 4 lost, each run
    md, r = trades_over_runs([lossy, lossy, run0])
    assert r["types_lost"] == ["x"] and r["cells_lost"] == 3 and "| x | 12 | 83.3% | 0.0% | -83.3 ± " in md


def test_expected_chance_flags_matches_a_simulation():
    """Σ Φ(-1 - μ/se): Φ(-1) = 0.1587 per cell at μ = 0; a simulated count of cells with d̂ < -se agrees."""
    assert expected_chance_flags([(0.0, 0.05)] * 70) == pytest.approx(70 * 0.158655, rel=1e-5)
    assert expected_chance_flags([(0.3, 0.05)]) < 1e-9 and expected_chance_flags([(-1.0, 0.05)]) > 0.999
    cells = [(mu, se) for mu in (-0.05, 0.0, 0.02, 0.1) for se in (0.03, 0.06)] * 25
    rng = random.Random(0)
    sims = [sum(rng.gauss(mu, se) < -se for mu, se in cells) for _ in range(2000)]
    mean = sum(sims) / len(sims)
    sd = mean_stderr([float(x) for x in sims])
    assert abs(mean - expected_chance_flags(cells)) < 4 * sd, (mean, expected_chance_flags(cells))
