"""Training-step throughput: ours vs Hugging Face GPT2LMHeadModel, same shapes, same device, same run.

    python bench/bench_train.py                      # tiny + gpt2-124m at CPU-sized B, T
    python bench/bench_train.py --batch 16 --seq 1024 --compile   # on a GPU: the seed's shape, bf16

Prints a table of tokens/s (forward + backward + AdamW step) and ours/HF.
"""
from __future__ import annotations

import argparse
import time

import torch

from llmrecipe.train import stage_config
from llmrecipe.model import from_hf_state_dict, hf_config
from llmrecipe.runtime import setup
from llmrecipe.train.loop import TrainConfig, make_optimizer


def train_step(model, loss_fn, x, y, rt, opt) -> None:
    """One bare step: forward and loss under autocast, backward, clip at 1.0, AdamW."""
    with rt.autocast():
        loss = loss_fn(model, x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def step_time(model, loss_fn, x, y, rt, steps: int, warmup: int) -> float:
    opt = make_optimizer(model, TrainConfig(), rt.device)
    for i in range(warmup + steps):
        if i == warmup:
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        train_step(model, loss_fn, x, y, rt, opt)
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="tiny,gpt2-124m")
    ap.add_argument("--batch", type=int, help="default: 16 (tiny), 1 on CPU / 16 on GPU (gpt2-124m)")
    ap.add_argument("--seq", type=int, help="default: the preset's block_size (gpt2-124m: 256 on CPU)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    import transformers

    rt = setup()
    cpu = rt.device.type == "cpu"
    print(f"device: {torch.cuda.get_device_name() if not cpu else 'cpu'}, threads {torch.get_num_threads()}, "
          f"autocast {rt.autocast_dtype}")
    print("| preset | B | T | ours tok/s | HF tok/s | ours/HF |" + (" MFU |" if not cpu else ""))
    print("|---|---:|---:|---:|---:|---:|" + ("---:|" if not cpu else ""))
    for preset in a.presets.split(","):
        cfg = stage_config("pretrain", preset).model
        B = a.batch or (16 if preset == "tiny" or not cpu else 1)
        T = a.seq or (256 if cpu and cfg.block_size > 256 else cfg.block_size)
        torch.manual_seed(0)
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(cfg))).to(rt.device)
        ours = from_hf_state_dict(hf.state_dict(), cfg).to(rt.device)
        x = torch.randint(0, cfg.vocab_size, (B, T), device=rt.device)
        runs = {"ours": (ours, lambda m, x, y: m(x, y)[1]), "hf": (hf, lambda m, x, y: m(x, labels=y).loss)}
        tps = {}
        for name, (m, fn) in runs.items():
            m.train()
            fwd = torch.compile(m) if a.compile else m
            tps[name] = B * T / step_time(fwd, fn, x, x, rt, a.steps, a.warmup)
        row = (f"| {preset} | {B} | {T} | {tps['ours']:,.0f} | {tps['hf']:,.0f} | "
               f"{tps['ours'] / tps['hf']:.2f}x |")
        if not cpu and rt.peak_flops:
            n = ours.num_params()
            mfu = tps["ours"] * (6 * n + 12 * cfg.n_layer * cfg.n_embd * T) / rt.peak_flops
            row += f" {mfu:.1%} |"
        print(row, flush=True)
        del hf, ours


if __name__ == "__main__":
    main()
