"""Evaluation: the suites on one harness (see harness.py)."""
from __future__ import annotations

from .gsm8k import GSM8K
from .harness import Suite
from .ifeval import IFEval
from .mmlu_pro import MMLUPro, MMLUProCategory
from .mt_bench import MTBench

SUITES = {"mmlu_pro": MMLUPro, "mmlu_pro_category": MMLUProCategory, "gsm8k": GSM8K, "ifeval": IFEval,
          "mt_bench": MTBench}
# `--suites all`: the four benchmarks, each in its own protocol (mmlu_pro_category only when named)
ALL = ("mmlu_pro", "gsm8k", "ifeval", "mt_bench")


def make_suites(names: str, data_dir: str | None, **options) -> list[Suite]:
    """`names`: comma-separated suite names or "all"; options are passed to the suites that take them."""
    chosen = list(ALL) if names == "all" else [n.strip() for n in names.split(",") if n.strip()]
    if not chosen:
        raise ValueError(f"no suite named in {names!r}: name one or more of {', '.join(SUITES)}, or all")
    if len(set(chosen)) < len(chosen):
        raise ValueError(f"a suite is named twice in {names!r}")
    unknown = [n for n in chosen if n not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite(s) {', '.join(unknown)} (available: {', '.join(SUITES)})")
    suites = []
    for n in chosen:
        cls = SUITES[n]
        fields = cls.__dataclass_fields__
        suites.append(cls(data_dir=data_dir,
                          **{k: v for k, v in options.items() if k in fields and v is not None}))
    return suites
