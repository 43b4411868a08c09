"""Where a pre-training step's time goes: the kernels of one compiled gpt2-124m step, largest first.

    PYTHONPATH=src python bench/profile_step.py --batch 16 --seq 1024        # on a GPU
    python bench/profile_step.py --preset tiny --batch 4 --seq 64 --steps 2   # CPU smoke run

Prints the bare step's tokens/s (forward + backward + clip + fused AdamW, no loader) for each micro-batch
size asked for, then torch.profiler's table of the top kernels for the first size: the figures that
decide what to optimise next (attention, the LM head and its cross-entropy, the optimizer, launch gaps).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import step_time, train_step  # noqa: E402

from llmrecipe.train import stage_config  # noqa: E402
from llmrecipe.model import GPT  # noqa: E402
from llmrecipe.runtime import setup  # noqa: E402
from llmrecipe.train.loop import TrainConfig, make_optimizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpt2-124m")
    ap.add_argument("--batch", default="16", help="comma-separated micro-batch sizes to time")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--no-cudnn-attention", action="store_true", help="SDPA without the cuDNN backend")
    ap.add_argument("--decode", type=int, default=0, help="also profile N greedy decode steps at batch 16")
    a = ap.parse_args()
    rt = setup()
    if a.no_cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(False)
    cfg = stage_config("pretrain", a.preset).model
    if a.decode:
        decode(cfg, rt, a.decode, a.top)
    cfg.block_size = max(cfg.block_size, a.seq)
    loss_fn = lambda m, x, y: m(x, y)[1]  # noqa: E731
    for i, B in enumerate(int(b) for b in a.batch.split(",")):
        torch.manual_seed(0)
        model = GPT(cfg).to(rt.device).train()
        fwd = model if a.no_compile else torch.compile(model)
        x = torch.randint(0, cfg.vocab_size, (B, a.seq), device=rt.device)
        sec = step_time(fwd, loss_fn, x, x, rt, a.steps, warmup=3)
        n = model.num_params()
        flops = 6 * n + 12 * cfg.n_layer * cfg.n_embd * a.seq
        mfu = f", MFU {B * a.seq / sec * flops / rt.peak_flops:.1%}" if rt.peak_flops else ""
        print(f"B={B} T={a.seq}: {sec * 1e3:.1f} ms/step, {B * a.seq / sec:,.0f} tokens/s{mfu}", flush=True)
        if i == 0 and a.top:
            opt = make_optimizer(model, TrainConfig(), rt.device)
            acts = [torch.profiler.ProfilerActivity.CPU]
            if rt.device.type == "cuda":
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=acts) as prof:
                for _ in range(3):
                    train_step(fwd, loss_fn, x, x, rt, opt)
                if rt.device.type == "cuda":
                    torch.cuda.synchronize()
            key = "self_cuda_time_total" if rt.device.type == "cuda" else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=a.top, max_name_column_width=70))
        del model, fwd


def decode(cfg, rt, steps: int, top: int) -> None:
    """ms per decode step of the engine at batch 16 (KV cache, left-padded prompts), and its kernels."""
    import time

    from types import SimpleNamespace

    from llmrecipe.engine import Engine

    model = GPT(cfg).to(rt.device)
    eng = Engine(model, SimpleNamespace(eot_id=cfg.vocab_size - 1), rt, batch_size=16)  # decode needs no text
    g = torch.Generator(device=rt.device).manual_seed(0)
    prompts = [list(range(100, 132 + r)) for r in range(16)]
    sum(1 for _ in eng._steps(prompts, 8, 0.0, None, None, g))  # warm-up
    t0 = time.perf_counter()
    n = sum(1 for _ in eng._steps(prompts, steps, 0.0, None, None, g))
    print(f"decode, batch 16: {(time.perf_counter() - t0) / n * 1e3:.2f} ms/step ({n} steps)", flush=True)
    if not top:
        return
    with torch.profiler.profile() as prof:
        sum(1 for _ in eng._steps(prompts, 16, 0.0, None, None, g))
    key = "self_cuda_time_total" if rt.device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=70))


if __name__ == "__main__":
    main()
