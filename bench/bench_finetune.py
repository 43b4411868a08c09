"""SFT and DPO step cost: LoRA vs full fine-tuning, and DPO's reference as a disabled adapter vs a copy.

    python bench/bench_finetune.py --preset gpt2-124m --batch 2 --seq 256     # CPU-sized
    python bench/bench_finetune.py --preset gpt2-124m --batch 8 --seq 1024    # on a GPU

Each mode runs in its own process so peak memory is its own: max RSS on CPU (minus the RSS of a process
that only built the model), max allocated on CUDA. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time

import torch

from llmrecipe.train import stage_config
from llmrecipe.chat import IGNORE
from llmrecipe.lora import LoRAConfig, adapters_disabled, inject
from llmrecipe.model import GPT
from llmrecipe.runtime import setup
from llmrecipe.train.dpo import dpo_loss, sequence_logps
from llmrecipe.train.loop import TrainConfig, make_optimizer


MODES = ["model-only", "sft-lora", "sft-full", "dpo-adapter", "dpo-copy"]


def peak_mb(rt) -> float:
    if rt.device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(mode: str, preset: str, B: int, T: int, steps: int) -> dict:
    rt = setup()
    torch.manual_seed(0)
    model = GPT(stage_config("pretrain", preset).model).to(rt.device)
    V = model.config.vocab_size
    if mode == "model-only":
        return {"mode": mode, "peak_mb": peak_mb(rt)}
    ref = copy.deepcopy(model).requires_grad_(False) if mode == "dpo-copy" else None
    if mode != "sft-full":
        inject(model, LoRAConfig())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = make_optimizer(model, TrainConfig(lr=1e-4), rt.device)
    rows = 2 * B if mode.startswith("dpo") else B
    x = torch.randint(0, V, (rows, T), device=rt.device)
    y = x.roll(-1, 1).masked_fill(torch.arange(T, device=rt.device) < T // 2, IGNORE)  # response = 2nd half
    for i in range(steps + 1):
        if i == 1:  # first step is warm-up
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with rt.autocast():
            if mode.startswith("sft"):
                loss = model(x, y)[1]
            else:
                policy = sequence_logps(model(x)[0], y, y != IGNORE)
                with torch.no_grad():
                    if ref is not None:
                        r = sequence_logps(ref(x)[0], y, y != IGNORE)
                    else:
                        with adapters_disabled(model):
                            r = sequence_logps(model(x)[0], y, y != IGNORE)
                loss, _ = dpo_loss(policy[:B], policy[B:], r[:B], r[B:], 0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    return {"mode": mode, "trainable": trainable, "step_s": dt, "tokens_per_s": rows * T / dt,
            "pairs_per_s": B / dt if mode.startswith("dpo") else None, "peak_mb": peak_mb(rt)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt2-124m")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.preset, a.batch, a.seq, a.steps)))
        return
    res = {}
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, "--one", mode, "--preset", a.preset,
                              "--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps)],
                             capture_output=True, text=True, check=True)
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    base = res.pop("model-only")["peak_mb"]
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"preset {a.preset}, B={a.batch} (pairs for DPO), T={a.seq}, device {dev}; "
          f"memory = peak minus a model-only process ({base:,.0f} MB)")
    print("| mode | trainable params | step s | tokens/s | pairs/s | peak memory over model-only (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for m, r in res.items():
        pairs = f"{r['pairs_per_s']:.2f}" if r["pairs_per_s"] else ""
        print(f"| {m} | {r['trainable']:,} | {r['step_s']:.2f} | {r['tokens_per_s']:,.0f} | {pairs} | "
              f"{r['peak_mb'] - base:,.0f} |")


if __name__ == "__main__":
    main()
