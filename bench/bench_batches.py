"""What the fine-tuning stages' batch layouts cost, before and after session 17, on a real run's data.

    python bench/bench_batches.py --run runs/demo --steps 30
    python bench/bench_batches.py --base M --sft M --sft-data chats.jsonl --pairs prefs.parquet  # any data

Each stage's own batches (the tiny preset's sizes, steps 0..N of its own order) through its own loss,
backward and optimizer step, timed both ways in one process on the same weights:
- SFT: right-padded rows (`collate`) vs the micro-batch's conversations packed side by side, each
  attending only to itself (`collate_packed`, the preset's `pack_rows`);
- DPO: each reply's row holding its whole prompt vs the prompt computed once for both replies
  (`model.Prefix`), where `collate_pairs` finds that computes fewer positions;
- RL: see bench/bench_rl_step.py (its last rows).
Both layouts give the same loss to fp32 rounding (tests/test_sft.py, tests/test_model.py); this measures
only time, and the share of the computed token positions that are needed (each conversation's tokens; each
prompt once and each reply), the rest being padding or repeated prompts. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from llmrecipe.train import stage_config
from llmrecipe.data.chat import collate
from llmrecipe.data.preference import collate_pairs
from llmrecipe.runtime import setup
from llmrecipe.train.dpo import DPOStage
from llmrecipe.train.sft import SFTStage


def timed_steps(stage, batches: list, warmup: int = 3) -> float:
    """ms per optimizer step (loss + backward + AdamW) over `batches`, after `warmup` of them."""
    model = stage.model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for i, b in enumerate(batches):
        if i == warmup:
            t = time.perf_counter()
        loss, _ = stage.loss(model, b)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t) / (len(batches) - warmup) * 1000


def computed(x: torch.Tensor, prefix=None) -> int:
    """Token positions a forward computes (real or not)."""
    return x.numel() + (prefix.idx.numel() if prefix is not None else 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a `llmrecipe run --preset tiny` folder: base, sft and world/ inside")
    ap.add_argument("--base", help="SFT's starting model (default RUN/base)")
    ap.add_argument("--sft", help="DPO's starting model or adapter (default RUN/sft)")
    ap.add_argument("--sft-data", help="chat conversations (default RUN/world/sft.jsonl)")
    ap.add_argument("--pairs", help="preference pairs (default RUN/world/preferences.jsonl)")
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    run = Path(a.run) if a.run else None
    if run is None and not (a.base and a.sft and a.sft_data and a.pairs):
        ap.error("give --run, or all of --base, --sft, --sft-data and --pairs")
    base, sft = a.base or str(run / "base"), a.sft or str(run / "sft")
    sft_data = a.sft_data or str(run / "world" / "sft.jsonl")
    pairs = a.pairs or str(run / "world" / "preferences.jsonl")
    rt = setup("cpu", "float32")
    rows = []

    cfg = stage_config("sft", "tiny")
    cfg.base, cfg.data = base, sft_data
    stage = SFTStage(cfg, rt)
    examples = [stage.batches(s, 0) for s in range(a.steps)]
    real = sum(len(e.ids) - 1 for ex in examples for e in ex)
    padded = [collate(ex, stage.tokenizer.eot_id) for ex in examples]
    cfg.pack_rows = True
    packed = [stage.batch(s, 0) for s in range(a.steps)]
    state = {k: v.clone() for k, v in stage.model.state_dict().items()}
    before = timed_steps(stage, padded)
    stage.model.load_state_dict(state)
    n_packed = sum(len(b) == 4 for b in packed)
    rows.append((f"SFT: right-padded rows → packed rows ({n_packed}/{a.steps} batches)", before,
                 timed_steps(stage, packed),
                 real / sum(computed(b[0]) for b in padded), real / sum(computed(b[0]) for b in packed)))

    cfg = stage_config("dpo", "tiny")
    cfg.sft, cfg.data = sft, pairs
    stage = DPOStage(cfg, rt, Path("."))  # run_dir only holds a precomputed reference: off here
    shared = [stage.batch(s, 0) for s in range(a.steps)]  # the stage's choice, batch by batch
    whole, real = [], 0
    for s, (_, _, ids, _) in enumerate(shared):
        pairs_s = stage.batches(s, 0)
        x, y, _ = collate_pairs(pairs_s, stage.tokenizer.eot_id, shared=False)  # each reply with its prompt
        whole.append((x, y, ids, None))  # `prefix=None`: the plain forward
        real += sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs_s)
    state = {k: v.clone() for k, v in stage.model.state_dict().items()}
    before = timed_steps(stage, whole)
    stage.model.load_state_dict(state)
    n_shared = sum(b[3] is not None for b in shared)
    rows.append((f"DPO: prompt in each reply's row → once, where cheaper ({n_shared}/{a.steps} batches)",
                 before, timed_steps(stage, shared),
                 real / sum(computed(b[0]) for b in whole), real / sum(computed(b[0], b[3]) for b in shared)))

    print(f"\nfine-tuning steps on {sft_data} and {pairs}, {a.steps} steps each (3 warm-up), "
          f"{torch.get_num_threads()} threads\n")
    print("| stage: layout before → now | before (ms/step) | now (ms/step) | before / now "
          "| needed tokens / computed, before → now |\n|---|---:|---:|---:|---|")
    for name, b, n, fb, fn in rows:
        print(f"| {name} | {b:.1f} | {n:.1f} | {b / n:.2f}x | {fb:.0%} → {fn:.0%} |")


if __name__ == "__main__":
    main()
