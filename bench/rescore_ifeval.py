"""Re-score a sweep's SFT and DPO models on a fresh, larger IFEval analog: which instruction types DPO trades.

    python bench/rescore_ifeval.py --sweep runs/sweep --items 600 --out runs/rescore600

Why: the preset scores 300 instruction prompts, ~30 per type, so a type's DPO − SFT has a standard error of
5-8 points and "lost by more than one stderr" turns on one or two prompts. The world holds ~730 distinct
held-out prompts per analog (`world.eval_items` beyond that is an error), so a fresh draw of 600 halves the
variance without training anything again: the models are read from `<sweep>/seed<S>/<variant>/{sft,dpo}`.
Prints per seed the paired DPO − SFT difference and the types lost by more than their stderr, then, pooled
over the seeds, each type's DPO − SFT (`trades_over_runs`: lost by the recipe, or by one seed's noise?) and
the (instruction, other instruction of the prompt) pairs DPO lost most often: a trade shows as a pair with
many SFT-right → DPO-wrong flips and few the other way.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from llmrecipe.world.datasets import write_eval_sets
from llmrecipe.eval import make_suites
from llmrecipe.eval.harness import comparisons, evaluate, load_eval_model, trades_over_runs
from llmrecipe.files import read_jsonl


def _flips(sft: Path, dpo: Path, down: Counter, up: Counter) -> None:
    """Count per (type, the prompt's other type) the prompts SFT followed and DPO did not, and back."""
    rows = zip(*([json.loads(x) for x in p.read_text().splitlines()] for p in (sft, dpo)))
    for a, b in rows:
        ids = [i.split(":")[1] for i in a["instruction_id_list"]]
        for k, t in enumerate(ids):
            key = (t, next((o for o in ids if o != t), "—"))
            down[key] += a["strict"][k] and not b["strict"][k]
            up[key] += b["strict"][k] and not a["strict"][k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", required=True, help="a bench/sweep_tiny.py --out folder")
    ap.add_argument("--variant", default="preset")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--items", type=int, default=600)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    down, up, cells, runs = Counter(), Counter(), 0, []
    print("| seed | IFEval SFT / DPO | DPO − SFT [95% CI] | types lost by > 1 stderr |\n|---:|---|---|---|")
    for seed in a.seeds:
        run, out = Path(a.sweep) / f"seed{seed}" / a.variant, Path(a.out) / f"seed{seed}"
        # the world seed's own characters, a fresh draw of held-out prompts (not the preset's 300)
        suites = make_suites("ifeval", str(write_eval_sets(out / "eval", seed, a.items)), max_new_tokens=96)
        res = {}
        for name in ("sft", "dpo"):
            model = load_eval_model(str(run / name), name=name)
            res[name] = evaluate(model, suites, out / f"{name}.json", None)
        c = comparisons(res, ["ifeval"])["sft→dpo"]
        d = c["paired"]["ifeval"]
        lost = {k: v for k, v in c["per_instruction"].items() if v["delta"] < -v["stderr"] - 1e-12}
        cells += len(lost)
        s = [100 * res[m]["suites"]["ifeval"]["prompt_strict"] for m in ("sft", "dpo")]
        lost_text = ", ".join(f"{k.split(':')[1]} {100 * v['delta']:+.1f} ± {100 * v['stderr']:.1f}"
                              for k, v in lost.items()) or "none"
        print(f"| {seed} | {s[0]:.1f} / {s[1]:.1f} | {100 * d['delta']:+.1f} [{100 * d['low']:+.1f}, "
              f"{100 * d['high']:+.1f}] | {lost_text} |", flush=True)
        _flips(out / "sft.ifeval.jsonl", out / "dpo.ifeval.jsonl", down, up)
        runs.append(tuple(read_jsonl(out / f"{m}.ifeval.jsonl") for m in ("sft", "dpo")))
    print(f"\n{cells} type-seed cells lost by > 1 stderr ({len(a.seeds)} seeds x 14 types, "
          f"{a.items} prompts)\n")
    print(trades_over_runs(runs)[0])
    print("\n| instruction | other instruction | SFT right → DPO wrong | DPO right, SFT wrong |")
    print("|---|---|---:|---:|")
    for key in sorted(set(down) | set(up), key=lambda k: up[k] - down[k])[:12]:
        print(f"| {key[0]} | {key[1]} | {down[key]} | {up[key]} |")


if __name__ == "__main__":
    main()
