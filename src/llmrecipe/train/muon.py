"""Muon (Keller Jordan, 2024: "Muon: an optimizer for hidden layers of neural networks"): for each hidden
weight matrix, SGD with Nesterov momentum whose update is replaced by the nearest semi-orthogonal matrix,
found by a few Newton–Schulz iterations. Every direction of the update then moves the layer's output by the
same amount, which is what lets the modded-nanogpt records and nanochat train GPT-2-sized models in a
fraction of AdamW's tokens. Embeddings, the head, norms and biases are not hidden matrices: AdamW trains them,
in the same optimizer so that one state dict (and one checkpoint) holds both.
"""
from __future__ import annotations

import torch

# The quintic iteration's coefficients from the Muon post: they push every singular value of the normalised
# update into roughly [0.7, 1.2] in five steps (not exactly 1: speed over exactness, which the post found
# costs nothing in training).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """The transformer blocks' 2-D weights (attention and MLP projections), not LoRA's factors."""
    return p.dim() == 2 and ".h." in f".{name}" and "lora_" not in name


@torch.no_grad()
def orthogonalise(g: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """≈ U Vᵀ of g = U S Vᵀ, by Newton–Schulz on g / ‖g‖ (fp32: this runs on CPU as well as GPU)."""
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide side: x xᵀ is the smaller product
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return (x.T if tall else x).to(g.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Groups of kind "muon" (hidden matrices) and "adamw" (the rest); `lr` per group, set by the loop."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float], eps: float = 1e-8):
        super().__init__(groups, dict(lr=lr, betas=betas, eps=eps, weight_decay=0.0, momentum=0.95,
                                      kind="adamw", lr_ratio=1.0))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if wd:
                    p.mul_(1 - lr * wd)
                if group["kind"] == "muon":
                    if not state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    buf, mu = state["momentum_buffer"], group["momentum"]
                    buf.mul_(mu).add_(p.grad)
                    update = orthogonalise(p.grad.add(buf, alpha=mu))  # Nesterov: look ahead along buf
                    # the post's scale: an update of the same RMS whatever the matrix's aspect ratio
                    p.add_(update, alpha=-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5)
                else:
                    if not state:
                        state["step"] = torch.zeros((), dtype=torch.float32)
                        state["exp_avg"] = torch.zeros_like(p)
                        state["exp_avg_sq"] = torch.zeros_like(p)
                    (b1, b2), t = group["betas"], state["step"].add_(1)  # a tensor: no host sync
                    state["exp_avg"].lerp_(p.grad, 1 - b1)
                    state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                    denom = (state["exp_avg_sq"] / (1 - b2 ** t)).sqrt_().add_(group["eps"])
                    p.sub_(state["exp_avg"] / denom * (lr / (1 - b1 ** t)))
