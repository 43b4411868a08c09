"""Classic vs modern pre-training, side by side: validation loss against tokens and against wall-clock, at
equal parameter count and equal data, over seeds.

    python bench/compare_presets.py --seeds 0 1 2 --out runs/compare \
        --variant tiny tiny --variant modern modern-tiny --variant modern+muon modern-tiny optimizer=muon
    # real text: a 6 x 384 GPT-2 vs its modern twin on the Wikipedia sample (shared/data/pretrain/enwiki2015)
    python bench/compare_presets.py --corpus enwiki --seeds 0 1 2 --out runs/compare-wiki \
        --set n_layer=6 n_head=6 n_embd=384 block_size=512 max_steps=2000 batch_size=32 warmup_steps=100 \
        --variant gpt2 gpt2-124m --variant modern modern-124m mlp_hidden=1024 optimizer=adamw lr=1.5e-3 \
        --variant modern+muon modern-124m mlp_hidden=1024

The world corpus (`--corpus world`): each seed's corpus and tokenizer are made once (the tiny preset's
settings); enwiki: the sample's training file in GPT-2 tokens, made once, 1 document in 50 held out for
validation, the seed changing initial weights and data order only. Every variant pre-trains on the same
shards with the same seed, for the first variant's steps and batch (equal data; `--set` applies to all,
a variant's own KEY=VALUE after it). Prints, per variant, the validation loss at each evaluation (mean ±
standard deviation over seeds), the seconds per run, and the tokens each variant needs to reach the first
variant's final validation loss, as a ratio to the first's with a 95% interval over seeds (t distribution).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from llmrecipe.config import apply_overrides, load_preset, parse_overrides  # noqa: E402
import torch  # noqa: E402

from llmrecipe.data.prepare import PrepareConfig, prepare  # noqa: E402
from llmrecipe.model import GPT  # noqa: E402
from llmrecipe.report import environment  # noqa: E402
from llmrecipe.train import stage_config  # noqa: E402
from llmrecipe.train.pretrain import run_pretrain  # noqa: E402
from llmrecipe.world.corpus import write_pretrain_corpus  # noqa: E402

T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def enwiki_data(shared: Path, out: Path) -> Path:
    folder = out / "enwiki-data"
    if not (folder / "meta.json").is_file():
        source = shared / "pretrain" / "enwiki2015" / "enwiki2015_train.parquet"
        ranks = shared / "tokenizer" / "r50k_base.tiktoken"
        if not source.is_file() or not ranks.is_file():
            raise SystemExit(f"error: {source} and {ranks} are needed for --corpus enwiki (see --data)")
        prepare(PrepareConfig(source=str(source), out=str(folder), tokenizer=f"gpt2:{ranks}", val_every=50))
    return folder


def data_for(seed: int, out: Path) -> Path:
    p = load_preset("tiny")
    world, prep = p["world"], p["prepare"]
    folder = out / f"seed{seed}" / "data"
    if not (folder / "meta.json").is_file():
        corpus = out / f"seed{seed}" / "pretrain.jsonl"
        corpus.parent.mkdir(parents=True, exist_ok=True)
        write_pretrain_corpus(corpus, world["pretrain_docs"], seed, world["arithmetic_percent"],
                              bool(world["digit_sums"]))
        prepare(PrepareConfig(**{**prep, "source": str(corpus), "out": str(folder)}))
    return folder


def curve(run: Path) -> list[tuple[int, float, float]]:
    """(tokens, training seconds, val_loss) at every evaluation of a finished run (the tokens and seconds of
    the training record logged at the same step)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    at = {r["step"]: (r["tokens"], r["elapsed"]) for r in rows if "tokens" in r}
    return [(*at[r["step"]], r["val_loss"]) for r in rows if "val_loss" in r]


def to_reach(points: list[tuple[int, float, float]], target: float, axis: int) -> float | None:
    """The tokens (axis 0) or training seconds (axis 1) at which the curve first reaches `target`,
    interpolated linearly between evaluations."""
    prev = None
    for point in points:
        if point[2] <= target:
            if prev is None:
                return float(point[axis])
            return prev[axis] + (point[axis] - prev[axis]) * (prev[2] - target) / (prev[2] - point[2])
        prev = point
    return None


def mean_interval(xs: list[float]) -> str:
    if len(xs) < 2:
        return f"{xs[0]:.3f}" if xs else "—"
    m, sd = statistics.mean(xs), statistics.stdev(xs)
    h = T95.get(len(xs) - 1, 1.96) * sd / math.sqrt(len(xs))
    return f"{m:.3f} [{m - h:.3f}, {m + h:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--variant", nargs="+", action="append", metavar=("NAME PRESET", "KEY=VALUE"),
                    help="a name, a preset, and pre-training overrides (the first variant is the baseline)")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="pre-training overrides for every variant (a model shape, steps, batch)")
    ap.add_argument("--corpus", choices=("world", "enwiki"), default="world")
    ap.add_argument("--data", default="../shared/data", help="the shared data folder (--corpus enwiki)")
    ap.add_argument("--eval-interval", type=int, default=100)
    ap.add_argument("--eval-batches", type=int, default=16)
    a = ap.parse_args()
    variants = a.variant or [["tiny", "tiny"], ["modern", "modern-tiny"]]
    out = Path(a.out)
    results: dict[str, dict[int, dict]] = {}
    def config(preset: str, sets: list[str], data: Path, seed: int):
        cfg = stage_config("pretrain", preset)
        cfg.data, cfg.train.seed = str(data), seed
        cfg.train.eval_interval, cfg.train.eval_batches = a.eval_interval, a.eval_batches
        # a training record (tokens, seconds) at every evaluation's step
        cfg.train.log_interval = math.gcd(cfg.train.log_interval, a.eval_interval)
        return apply_overrides(cfg, {**parse_overrides(a.set), **parse_overrides(sets)})

    for seed in a.seeds:
        data = data_for(seed, out) if a.corpus == "world" else enwiki_data(Path(a.data), out)
        first = config(variants[0][1], [], data, seed)
        for name, preset, *sets in variants:
            run = out / f"seed{seed}" / name
            # equal data: the baseline's steps, batch and context unless the variant itself says otherwise
            same = {k: str(getattr(first.train, k)) for k in ("max_steps", "batch_size", "grad_accum")}
            same["block_size"] = str(first.model.block_size)
            sets = [f"{k}={v}" for k, v in {**same, **parse_overrides(sets)}.items()]
            cfg = config(preset, sets, data, seed)
            if not (run / "model.safetensors").is_file():
                t0 = time.time()
                run_pretrain(cfg, run)
                (run / "seconds.txt").write_text(f"{time.time() - t0:.1f}")
            with torch.device("meta"):
                params = sum(p.numel() for p in GPT(cfg.model).parameters())
            results.setdefault(name, {})[seed] = {"curve": curve(run), "params": params,
                                                  "seconds": float((run / "seconds.txt").read_text())}
    names, base = [v[0] for v in variants], variants[0][0]
    steps = [t for t, _, _ in results[base][a.seeds[0]]["curve"]]
    cpu = environment()["cpu"]
    print(f"Validation loss by tokens seen ({len(a.seeds)} world seeds: mean ± sd), {cpu}:\n")
    print("| tokens | " + " | ".join(names) + " |\n|---:|" + "---:|" * len(names))
    for i, tok in enumerate(steps):
        cells = []
        for n in names:
            xs = [results[n][s]["curve"][i][2] for s in a.seeds if i < len(results[n][s]["curve"])]
            cells.append(f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.3f}")
        print(f"| {tok:,} | " + " | ".join(cells) + " |")
    print("\n| variant | parameters | seconds per run | final val loss | to the baseline's final loss: "
          "tokens, ratio "
          "[95%] | training seconds, ratio [95%] |")
    print("|---|---:|---:|---:|---:|---:|")
    for n in names:
        ratios: dict[int, list[float]] = {0: [], 1: []}
        for s in a.seeds:
            target, end = results[base][s]["curve"][-1][2], results[base][s]["curve"][-1]
            for axis in (0, 1):
                reach = to_reach(results[n][s]["curve"], target, axis)
                if reach is not None:
                    ratios[axis].append(reach / end[axis])
        secs = statistics.mean(results[n][s]["seconds"] for s in a.seeds)
        final = statistics.mean(results[n][s]["curve"][-1][2] for s in a.seeds)
        cells = [f"{mean_interval(ratios[axis])} ({len(ratios[axis])}/{len(a.seeds)} reach it)"
                 for axis in (0, 1)]
        params = results[n][a.seeds[0]]["params"]
        print(f"| {n} | {params:,} | {secs:.0f} | {final:.3f} | {cells[0]} | {cells[1]} |")
    (out / "compare.json").write_text(json.dumps({"variants": variants, "seeds": a.seeds, "results": {
        n: {str(s): r for s, r in v.items()} for n, v in results.items()}}, indent=1))


if __name__ == "__main__":
    main()
