"""Tolerances for equivalence tests, derived from fp32 rounding instead of tuned on one CPU.

Two computations that are equal in exact arithmetic (accumulated micro-batches vs one batch, 2 ranks vs 1,
KV cache vs full forward, ours vs transformers) differ in fp32 by the order in which sums are taken, and that
order is the kernels' choice: it changes with the CPU (AVX-512 vs AVX2 blocking), the thread count and the
library version. The classic bound for a sum of n terms is |error| <= n * eps * sum|terms| (Higham, γ_n); we
use n * eps * scale with the largest magnitude in the compared tensor as the scale, and n the longest
reduction on the path. This is loose for well-conditioned sums and tight enough that any real bug (a wrong
scale, a dropped micro-batch, a wrong mask) is orders of magnitude above it.
"""
from __future__ import annotations

import torch

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7


def fp32_atol(reference: torch.Tensor | float, reduction: int) -> float:
    scale = float(reference.abs().max()) if isinstance(reference, torch.Tensor) else abs(float(reference))
    return reduction * EPS32 * max(scale, 1e-30)


def assert_fp32_close(actual: torch.Tensor, expected: torch.Tensor, reduction: int, what: str = "") -> None:
    atol = fp32_atol(expected, reduction)
    diff = float((actual - expected).abs().max())
    assert diff <= atol, f"{what}: max |difference| {diff:.3g} > {atol:.3g} (= {reduction} x eps32 x max|x|)"


def assert_adam_weights_close(a: dict, b: dict, lr: float, steps: int, reduction: int) -> None:
    """Weights after `steps` AdamW steps from the same start, computed two fp32-equivalent ways.

    Adam divides by sqrt(v) + 1e-8, so for a weight whose gradient is ~1e-8 (a rare token's embedding,
    say) the rounding difference in that gradient is amplified up to the whole step size: such weights may
    differ by anything up to 2 * lr per step, the largest move Adam can make. (That is why a fixed atol of
    1e-5 passed on one CPU and failed on another on 1 weight of 16,384.) Every other weight must agree to fp32
    rounding; we ask that at most 1 in 1,000 weights is in the first group, and that none exceeds its bound.
    """
    assert a.keys() == b.keys()
    total = beyond = 0
    for k in a:
        d = (a[k] - b[k]).abs()
        bound = 2 * lr * steps
        assert float(d.max()) <= bound, (f"{k}: max |difference| {float(d.max()):.3g} exceeds Adam's "
                                         f"{bound:.3g}")
        beyond += int((d > fp32_atol(a[k], reduction)).sum())
        total += d.numel()
    assert beyond <= max(1, total // 1000), f"{beyond} of {total} weights differ beyond fp32 rounding"
