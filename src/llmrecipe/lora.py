"""LoRA: y = W x + (alpha / r) · B A x on chosen nn.Linear layers, with the base weights frozen.

`LoRALinear` *is* an nn.Linear (same `weight`/`bias` parameters, same names), with `lora_A`/`lora_B`
added, so state-dict keys stay `transformer.h.0.attn.c_attn.weight` and the adapter keys are exactly
PEFT's (`...c_attn.lora_A.weight`). Adapters save in PEFT's file format and load with PEFT onto the HF
export of the base model.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .files import (atomic_write_json, load_tensors, read_json, save_tensors, verify_checksum,
                    write_checksums)

PEFT_PREFIX = "base_model.model."


@dataclass
class LoRAConfig:
    r: int = 16  # rank of each adapter's A (r x in) and B (out x r)
    alpha: float = 32.0  # the update is scaled by alpha / r
    dropout: float = 0.05  # on the LoRA path's input
    # GPT-2 linear layers that get adapters
    target_modules: list[str] = field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])


class LoRALinear(nn.Linear):
    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias  # shared, not copied
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=dev, dtype=dt)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=dev, dtype=dt)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled, self.merged = True, False

    def delta_weight(self) -> torch.Tensor:
        return lora_delta(self.lora_A.weight, self.lora_B.weight, self.scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if not self.enabled or self.merged:
            return y
        # y + scaling · B(A x) as one addmm: the GEMM accumulates into y and folds in the scale, where
        # `y + lora_B(...) * scaling` makes two more passes over the (tokens × out) activations. On a
        # 2-core CPU those passes cost as much as the adapter's matmuls (~20% of a LoRA step).
        ax = F.linear(self.lora_dropout(x), self.lora_A.weight)
        out = torch.addmm(y.reshape(-1, y.size(-1)), ax.reshape(-1, ax.size(-1)), self.lora_B.weight.t(),
                          alpha=self.scaling)
        return out.view(y.shape)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def inject(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Wrap matching nn.Linear layers (not the LM head), freeze everything else; returns wrapped names."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        if (isinstance(module, nn.Linear) and not isinstance(module, LoRALinear)
                and _matches(name, cfg.target_modules)):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child,
                    LoRALinear(module, cfg.r, cfg.alpha, cfg.dropout))
            wrapped.append(name)
    if not wrapped:
        raise ValueError(f"LoRA target_modules {cfg.target_modules} matched no nn.Linear layer")
    return wrapped


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def trainable_summary(model: nn.Module) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    return (f"trainable params: {trainable:,} || base params: {base:,} || "
            f"trainable%: {100 * trainable / base:.4f}")


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and turn the layers back into plain nn.Linear."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            module.merge()
            plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                              device="meta")
            plain.weight, plain.bias = module.weight, module.bias
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, plain)
    return model


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy with the adapters folded in: the same function at the base model's cost. Sampling is a
    forward per token, and an unmerged LoRA layer costs three matmuls where a merged one costs one (RL
    samples this way; the trained model itself stays unmerged, so no merge/unmerge round trip ever
    rounds its base weights)."""
    return merge(copy.deepcopy(model))


@torch.no_grad()
def refresh_merged(copy_: nn.Module, model: nn.Module) -> nn.Module:
    """Bring a `merged_copy` up to date after the adapters trained: W + scale·BA written in place, the
    layer's only weight that changes (a fresh deep copy per RL step cost 13 ms, a tenth of the step)."""
    layers = dict(copy_.named_modules())
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            layers[name].weight.copy_(m.weight + m.delta_weight().to(m.weight.dtype))
    return copy_


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """The base model's function without copying it (DPO's reference)."""
    layers = lora_layers(model)
    states = [m.enabled for m in layers]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m, s in zip(layers, states):
            m.enabled = s


# ---- PEFT file format ----

def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {PEFT_PREFIX + n: p for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n}


def relative_base(directory: Path, base: str | Path) -> str:
    """The base as recorded in adapter_config.json: relative to the adapter folder when both lie in the same
    run folder (runs/x/sft → ../base), so a moved or copied run keeps loading its own base; else absolute."""
    directory, base = Path(directory).resolve(), Path(base).resolve()
    if directory.parent == base or directory.parent in base.parents:
        return os.path.relpath(base, directory)
    return str(base)


def resolve_base(directory: Path, base: str) -> str:
    """The base folder an adapter_config.json names: a relative path is relative to the adapter folder."""
    return base if Path(base).is_absolute() else str(Path(directory) / base)


def save_adapter(directory: str | Path, model: nn.Module, cfg: LoRAConfig, base_path: str) -> None:
    """`adapter_model.safetensors` + `adapter_config.json`, as PEFT writes them for GPT-2."""
    directory = Path(directory)
    base_path = relative_base(directory, base_path)
    save_tensors(directory / "adapter_model.safetensors", adapter_state_dict(model), {"format": "pt"})
    write_checksums(directory, ["adapter_model.safetensors"])
    atomic_write_json(directory / "adapter_config.json", {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base_path),
        "r": cfg.r, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
        "target_modules": sorted(cfg.target_modules), "fan_in_fan_out": True,  # GPT-2's Conv1D layout in HF
        "bias": "none", "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
        "use_rslora": False, "use_dora": False, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {}, "revision": None,
    })


def lora_delta(a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """The weight change a LoRA pair stands for: ΔW = (α/r)·B·A — the one place this formula lives
    (merging, and the server's per-request adapter switching, both use it)."""
    return (b @ a) * scaling


def adapter_deltas(adapters: list[Path]) -> dict[str, torch.Tensor]:
    """Σ ΔW per weight name over a chain of adapter folders (each trained on the merge of those before it),
    in fp32, read from their files without building a model."""
    deltas: dict[str, torch.Tensor] = {}
    for folder in adapters:
        cfg, _ = read_adapter_config(folder)
        verify_checksum(Path(folder) / "adapter_model.safetensors")
        sd = {k.removeprefix(PEFT_PREFIX): v
              for k, v in load_tensors(Path(folder) / "adapter_model.safetensors").items()}
        for key, a in sd.items():
            if ".lora_A." in key:
                layer = key.split(".lora_A.")[0]
                d = lora_delta(a.float(), sd[f"{layer}.lora_B.weight"].float(), cfg.alpha / cfg.r)
                deltas[f"{layer}.weight"] = deltas.get(f"{layer}.weight", 0) + d
    return deltas


def read_adapter_config(directory: str | Path) -> tuple[LoRAConfig, str]:
    path = Path(directory) / "adapter_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not an adapter folder (no adapter_config.json)")
    c = read_json(path)
    if c.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{path}: peft_type {c.get('peft_type')!r} is not LORA")
    for key, ok, rule in (("r", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                           "an integer ≥ 1"),
                          ("lora_alpha", lambda v: isinstance(v, (int, float)) and v > 0, "a number > 0"),
                          ("target_modules", lambda v: isinstance(v, str) or (
                              isinstance(v, list) and v and all(isinstance(t, str) for t in v)),
                           "a module name or a list of them"),
                          ("base_model_name_or_path", lambda v: isinstance(v, str) and v, "the base folder")):
        if not ok(c.get(key)):
            raise ValueError(f"{path}: field {key!r} must be {rule}, got {c.get(key)!r}")
    targets = c["target_modules"]
    cfg = LoRAConfig(r=c["r"], alpha=float(c["lora_alpha"]), dropout=float(c.get("lora_dropout") or 0.0),
                     target_modules=[targets] if isinstance(targets, str) else list(targets))
    return cfg, resolve_base(Path(directory), c["base_model_name_or_path"])


def load_adapter(model: nn.Module, directory: str | Path) -> LoRAConfig:
    """Inject the adapter described in `directory` into `model` and load its weights."""
    cfg, _ = read_adapter_config(directory)
    inject(model, cfg)
    path = Path(directory) / "adapter_model.safetensors"
    verify_checksum(path)
    sd = {k.removeprefix(PEFT_PREFIX).replace(".default.", "."): v for k, v in load_tensors(path).items()}
    own = dict(model.named_parameters())
    for k, v in sd.items():
        if k not in own:
            raise ValueError(f"{path}: tensor {k!r} matches no LoRA layer of the model")
        if v.shape != own[k].shape:
            raise ValueError(f"{path}: {k!r} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}")
        with torch.no_grad():
            own[k].copy_(v)
    missing = [n for n in own if ("lora_A" in n or "lora_B" in n) and n not in sd]
    if missing:
        raise ValueError(f"{path}: missing adapter tensors, e.g. {missing[0]!r}")
    return cfg
