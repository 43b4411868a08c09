"""The tiny recipe over world seeds and DPO/RL settings: does each stage improve on the last?

    python bench/sweep_tiny.py --seeds 0 1 2 3 4 --out runs/sweep                      # the preset as it is
    python bench/sweep_tiny.py --seeds 0 1 2 --variant lr3e-4 dpo.train.lr=3e-4 --variant beta0.3 dpo.beta=0.3
    python bench/sweep_tiny.py --variant w20t20 pairs.wrong_content=0.2 pairs.truncated=0.2   # other pairs

Each seed's world, pre-training and SFT run once (runs/sweep/seed<S>/preset); a variant copies those stage
folders and reruns only DPO, RL and the evaluation (`run` skips stages whose settings are unchanged); a
variant of rl.* keys only also reuses DPO. `pairs.*` keys (wrong_content, truncated, miscount, unclosed,
unescaped, unasked_share, n; <kind>_extra for each kind of `world.EXTRA_PAIRS`: a share of n appended)
rewrite the variant's world/preferences.jsonl with `world.preference_pairs` (the preference data feeds DPO
alone, so pre-training and SFT stay the same; a targeted kind's share is of the pairs it applies to, and
changes only those). Prints one Markdown row per (variant, seed):
the three analogs' SFT and DPO scores ± stderr, the paired DPO − SFT difference on the instruction analog
with its bootstrap 95% interval, the instruction type that lost most (its paired difference ± stderr), and
RL's GSM8K analog score with the paired RL − DPO difference. Then the spread over seeds, and per variant the
instruction types' DPO − SFT pooled over the seeds (`trades_over_runs`: lost by the recipe, or by one seed's
noise?).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from llmrecipe.config import load_preset
from llmrecipe.world.rejections import HARD_REJECTIONS, TARGETED
from llmrecipe.world.datasets import EXTRA_PAIRS, preference_pairs, _write_jsonl
from llmrecipe.eval.harness import trades_over_runs
from llmrecipe.files import read_jsonl
from llmrecipe.recipe import run

HEAD = {"mmlu_pro_category": "accuracy", "gsm8k": "strict", "ifeval": "prompt_strict"}


def _row(name: str, seed: int, r: dict, seconds: float) -> tuple[str, dict]:
    s, comp = r["table"]["scores"], r["table"]["comparisons"]
    cells = []
    for suite, key in HEAD.items():
        cells.append(" / ".join(f"{100 * s[m][suite][key]:.1f}±{100 * s[m][suite]['stderr']:.1f}"
                                for m in ("base", "sft", "dpo")))
    base_sft, sft_dpo = comp["base→sft"]["paired"], comp["sft→dpo"]["paired"]
    d = sft_dpo["ifeval"]
    per = comp["sft→dpo"]["per_instruction"]
    worst_id, worst = min(per.items(), key=lambda kv: kv[1]["delta"] + kv[1]["stderr"])
    traded = sum(v["delta"] < -v["stderr"] - 1e-12 for v in per.values())
    base_lt_sft = all(base_sft[x]["low"] > 0 for x in HEAD)
    others = all(sft_dpo[x]["high"] >= 0 for x in ("mmlu_pro_category", "gsm8k"))  # not significantly worse
    rl = comp.get("dpo→rl", {}).get("paired")  # stage 5, when the preset runs it
    rl_cell = "—"
    if rl:
        g = rl["gsm8k"]
        i = rl["ifeval"]
        rl_cell = (f"{100 * s['rl']['gsm8k']['strict']:.1f} {100 * g['delta']:+.1f} [{100 * g['low']:+.1f}, "
                   f"{100 * g['high']:+.1f}]; IFEval {100 * i['delta']:+.1f} [{100 * i['low']:+.1f}, "
                   f"{100 * i['high']:+.1f}]")
    line = (f"| {name} | {seed} | " + " | ".join(cells) + f" | {100 * d['delta']:+.1f} "
            f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] | {worst_id.split(':')[1]} "
            f"{100 * worst['delta']:+.1f}±{100 * worst['stderr']:.1f} | {traded} | "
            f"{'yes' if base_lt_sft else 'NO'} | "
            f"{'yes' if others else 'NO'} | {rl_cell} | {seconds:.0f} |")
    rl_ok = rl is None or (rl["gsm8k"]["low"] > 0 and all(rl[x]["high"] >= 0 for x in ("mmlu_pro_category",
                                                                                      "ifeval")))
    return line, {"delta": d["delta"], "low": d["low"], "traded": traded, "ok": base_lt_sft and others
                  and d["low"] > 0 and traded == 0, "rl": rl and rl["gsm8k"], "rl_ok": rl_ok}


def _pairs(seed: int, keys: dict[str, float], common: dict[str, str], preset: str) -> list[dict]:
    """The world's preference pairs with other rejection shares (`pairs.*` variant keys)."""
    extras = {f"{k}_extra": k for k in EXTRA_PAIRS}  # pairs.unescaped_extra=0.05: 5% of n more pairs
    unknown = set(keys) - {"wrong_content", *TARGETED, "unasked_share", "n", *extras}
    if unknown:
        raise SystemExit(f"error: unknown variant key(s) pairs.{', pairs.'.join(sorted(unknown))}")
    hard = {**HARD_REJECTIONS, **{k: v for k, v in keys.items() if k in ("wrong_content", *TARGETED)}}
    extra = {**EXTRA_PAIRS, **{extras[k]: v for k, v in keys.items() if k in extras}}
    preset_n = load_preset(preset)["world"]["preference_pairs"]
    n = int(keys.get("n", common.get("world.preference_pairs", preset_n)))
    return preference_pairs(n, seed, keys.get("unasked_share", 0.4), hard, extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="tiny, modern-tiny or your own world preset")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", default="runs/sweep")
    ap.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME KEY=VALUE",
                    help="a name, then dpo.*/rl.*/eval.*/pairs.* overrides run on each seed's SFT (or DPO) "
                    "model")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="overrides for every run")
    a = ap.parse_args()
    common = dict(kv.split("=", 1) for kv in a.set)
    variants = [("preset", {})] + [(v[0], dict(kv.split("=", 1) for kv in v[1:])) for v in a.variant]
    print("| variant | seed | MMLU-Pro analog base / sft / dpo | GSM8K analog | IFEval analog "
          "| IFEval DPO − SFT [95% CI] | worst type (DPO − SFT) | types lost > stderr "
          "| base < SFT everywhere | DPO not worse elsewhere | RL GSM8K analog, RL − DPO [95% CI] | s |\n"
          "|---|---:|---|---|---|---|---|---:|---|---|---|---:|")
    summary: dict[str, list[dict]] = {}
    runs: dict[str, list[tuple[list[dict], list[dict]]]] = {}  # per variant: each seed's SFT and DPO records
    for name, overrides in variants:
        for seed in a.seeds:
            root = Path(a.out) / f"seed{seed}"
            folder = root / name
            if name != "preset" and not folder.exists():  # reuse the seed's world, base and SFT (and DPO
                # when the variant only changes RL): `run` then skips them, their settings being unchanged
                rl_only = all(k.startswith("rl.") for k in overrides)
                for stage in ("world", "data", "base", "sft") + (("dpo",) if rl_only else ()):
                    shutil.copytree(root / "preset" / stage, folder / stage)
                pairs = {k.split(".", 1)[1]: float(v) for k, v in overrides.items() if k.startswith("pairs.")}
                # rewritten for on-policy variants too: the pairs' checks as this code writes them
                if pairs or any(k.startswith("onpolicy.") for k in overrides):
                    _write_jsonl(folder / "world" / "preferences.jsonl",
                                 _pairs(seed, pairs, common, a.preset))
            settings = {k: v for k, v in overrides.items() if not k.startswith("pairs.")}
            t0 = time.time()
            r = run(a.preset, folder, {**common, "world.seed": str(seed), **settings})
            line, stats = _row(name, seed, r, time.time() - t0)
            summary.setdefault(name, []).append(stats)
            print(line, flush=True)
            runs.setdefault(name, []).append(tuple(read_jsonl(folder / "eval" / f"{m}.ifeval.jsonl")
                                                   for m in ("sft", "dpo")))
    print("\n| variant | seeds | IFEval DPO − SFT mean (min .. max) | lowest CI end | seeds passing all | "
          "GSM8K RL − DPO mean (min .. max) | lowest CI end | RL seeds: gain, no loss |"
          "\n|---|---:|---|---:|---:|---|---:|---:|")
    for name, rows in summary.items():
        ds = [100 * r["delta"] for r in rows]
        rls = [100 * r["rl"]["delta"] for r in rows if r["rl"]]
        rl = (f"{statistics.mean(rls):+.1f} ({min(rls):+.1f} .. {max(rls):+.1f}) | "
              f"{100 * min(r['rl']['low'] for r in rows if r['rl']):+.1f}" if rls else "— | —")
        print(f"| {name} | {len(rows)} | {statistics.mean(ds):+.1f} ({min(ds):+.1f} .. {max(ds):+.1f}) | "
              f"{100 * min(r['low'] for r in rows):+.1f} | {sum(r['ok'] for r in rows)}/{len(rows)} | {rl} | "
              f"{sum(r['rl_ok'] for r in rows if r['rl'])}/{len(rls)} |")
    for name, pairs in runs.items():  # does DPO trade a type away, asked of all seeds at once?
        print(f"\n**{name}**: " + trades_over_runs(pairs)[0])


if __name__ == "__main__":
    main()
