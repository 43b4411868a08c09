"""Training: one loop (loop.py) and the stages it runs, each a module: pre-training, SFT, DPO, RL with
verifiable rewards, and the on-policy rejections between SFT and DPO."""
from __future__ import annotations

from ..config import build, load_preset
from .dpo import DPOConfig
from .pretrain import PretrainConfig
from .rl import RLConfig
from .sft import SFTConfig

CONFIGS = {"pretrain": PretrainConfig, "sft": SFTConfig, "dpo": DPOConfig, "rl": RLConfig}


def stage_config(stage: str, preset: str, loaded: dict | None = None):
    """A training stage's settings from a preset: pre-training reads its `model` and `pretrain` sections, the
    LoRA stages their own section (with `lora:` and `train:` inside). `loaded`: the preset already read."""
    p = load_preset(preset) if loaded is None else loaded
    if stage == "pretrain":
        fields = {"model": p.get("model", {}), "train": p.get("pretrain", {})}
    else:
        fields = {"lora": {}, "train": {}, **p.get(stage, {})}
    return build(CONFIGS[stage], {**fields, "preset": preset})
