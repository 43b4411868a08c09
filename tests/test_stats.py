"""Error bars: the standard error lm-evaluation-harness prints, and the paired bootstrap of a difference."""
import math
import random

import pytest

from llmrecipe.eval.harness import comparisons_markdown, headline
from llmrecipe.eval.stats import mean_stderr, paired, paired_bootstrap, per_instruction


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
