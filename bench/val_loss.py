"""Validation loss of pre-trained models over the whole validation split, to compare pre-training runs.

    python bench/val_loss.py --data runs/demo/data runs/demo/base /tmp/other/base

The training loop's `val_loss` reads `eval_batches` x `batch_size` windows (tiny: 4 x 16 = 64 of the ~380
in a world's validation shard), enough to watch a run, too few to rank two runs that end 0.005 apart: this
reads every full window of `block_size + 1` tokens, in the loop's order (unshuffled), and prints the mean
token loss of each model, one Markdown row each. `--windows N` reads only the first N, as the loop would.
"""
from __future__ import annotations

import argparse
import math

import torch

from llmrecipe.checkpoint import load_model
from llmrecipe.data.loader import TokenWindows


@torch.no_grad()
def val_loss(model_dir: str, data: str, windows: int | None = None, batch: int = 64) -> tuple[float, int]:
    """(mean token cross-entropy, tokens read) of a model folder on the validation windows of `data`."""
    model, _ = load_model(model_dir)
    model.eval()
    cfg = model.config
    w = TokenWindows(data, "val", cfg.block_size, 0, cfg.vocab_size, shuffle=False)
    n = w.num_windows if windows is None else min(windows, w.num_windows)
    total, tokens = 0.0, 0
    for start in range(0, n, batch):
        x, y = w.batch(start, min(batch, n - start))
        # a sum, not a mean of batch means: the last batch may be smaller
        total += model(x, y)[1].double().item() * y.numel()
        tokens += y.numel()
    return total / tokens, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model folders (pretrain outputs)")
    ap.add_argument("--data", required=True,
                    help="the shard folder they were trained on (`prepare`'s output)")
    ap.add_argument("--windows", type=int, default=None, help="only the first N windows (default: all)")
    args = ap.parse_args()
    print("| model | validation loss | perplexity | tokens |\n|---|---:|---:|---:|")
    for m in args.models:
        loss, tokens = val_loss(m, args.data, args.windows)
        print(f"| {m} | {loss:.4f} | {math.exp(loss):.3f} | {tokens:,} |")


if __name__ == "__main__":
    main()
