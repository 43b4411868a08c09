"""Configs are data: YAML presets (one per recipe, a section per stage) → dataclasses, with CLI overrides.

`--set max_steps=300 n_layer=2` finds each key in whichever section of the stage's config defines it
(`model.n_layer=2` spells the section out when a name is ambiguous). Unknown keys and values of the
wrong type are errors, so a typo never silently trains the wrong model.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).parent / "configs"


def preset_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    p = PRESET_DIR / f"{name}.yaml"
    if not p.is_file():
        names = ", ".join(sorted(f.stem for f in PRESET_DIR.glob("*.yaml")))
        raise ValueError(f"unknown preset {name!r} (available: {names}; or a path to a .yaml file)")
    return p


def load_preset(name: str) -> dict:
    path = preset_path(name)
    try:
        preset = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ValueError(f"{path}: not valid YAML{line} ({getattr(e, 'problem', None) or e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if preset is None:
        return {}
    if not isinstance(preset, dict):
        raise ValueError(f"{path}: a preset is a YAML mapping of sections (model:, pretrain:, sft:, …), "
                         f"got a {type(preset).__name__}")
    for k, v in preset.items():
        if k != "extends" and not isinstance(v, dict):
            raise ValueError(f"{path}: section {k!r} must be a mapping of keys, got {v!r}")
    if "extends" in preset:  # a user's preset: another preset with only what it sets changed
        parent = preset.pop("extends")
        if not isinstance(parent, str) or Path(parent).resolve() == path.resolve():
            raise ValueError(f"{path}: 'extends' must name another preset, got {parent!r}")
        preset = _deep_merge(load_preset(parent), preset)
    elif path.parent != PRESET_DIR and (missing := [k for k in REQUIRED_SECTIONS if k not in preset]):
        # a partial preset would silently take the dataclasses' defaults (gpt2-124m's: warmup 2000, ...)
        raise ValueError(f"{path}: no {', '.join(missing)} section{'s' if len(missing) > 1 else ''}: start "
                         "it with `extends: tiny` (or gpt2-124m) to change only what it sets; "
                         "`llmrecipe preset show tiny` prints a whole preset to copy")
    return preset


REQUIRED_SECTIONS = ("model", "prepare", "pretrain", "sft", "dpo", "rl")


def show_preset(name: str) -> str:
    """A preset as YAML, `extends` resolved: what a run with it uses."""
    return yaml.safe_dump(load_preset(name), sort_keys=False, default_flow_style=False)


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# What makes two models the same model for a preset's hyperparameters (dropout may differ between stages)
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "vocab_size", "block_size")
# ... and the architecture's switches: modern-tiny has tiny's shape. A key absent (from a preset, or from a
# model.json written before the switches existed) means GPT-2's value, GPTConfig's default.
SWITCH_KEYS = ("position", "rope_theta", "norm", "norm_eps", "qk_norm", "mlp", "mlp_hidden", "bias",
               "tie_embeddings", "logit_softcap")


def _model_differences(name: str, model: dict) -> list[str]:
    from .model import GPTConfig

    p = load_preset(name).get("model") or {}
    diffs = [f"{k} {p[k]} vs {model.get(k)}" for k in MODEL_KEYS if k in p and p[k] != model.get(k)]
    default = GPTConfig()
    for k in SWITCH_KEYS:
        ours, theirs = p.get(k, getattr(default, k)), model.get(k, getattr(default, k))
        if ours != theirs:
            diffs.append(f"{k} {ours} vs {theirs}")
    return diffs


def choose_preset(explicit: str | None, model: dict, recorded: str | None, folder: str) -> tuple[str, str]:
    """The preset a stage on `folder` uses, and why: `--preset` if given (a loud warning when its model is not
    the folder's), else the preset the folder was trained with, else the one preset whose model matches.

    A stage command must never fall back to a preset silently: `sft` on a 124M base with tiny's settings
    (lr 5e-3, batch 16) trains for hours and produces a broken model without a word."""
    if explicit:
        if diffs := _model_differences(explicit, model):
            import sys

            trained = f"; the model was trained with --preset {recorded}" if recorded else ""
            print(f"WARNING: --preset {explicit} describes another model than {folder} ({'; '.join(diffs)}, "
                  f"preset vs model){trained}. Its hyperparameters were tuned for that other model.",
                  file=sys.stderr, flush=True)
        return explicit, "--preset"
    if recorded:
        preset_path(recorded)  # a clear error if the recorded preset no longer exists
        return recorded, f"the preset {folder} was trained with"
    names = sorted(f.stem for f in PRESET_DIR.glob("*.yaml"))
    matches = [n for n in names if load_preset(n).get("model") and not _model_differences(n, model)]
    if len(matches) == 1:
        return matches[0], f"the preset whose model is {folder}'s"
    shape = ", ".join(f"{k} {model.get(k)}" for k in MODEL_KEYS)
    which = ", ".join(matches) or "none"
    raise ValueError(f"{folder} records no preset and its model ({shape}) matches {which} of the presets: "
                     "pass --preset")


def settings_line(stage: str, cfg: Any, why: str = "") -> str:
    """One line that says which settings a stage runs with, printed before anything expensive starts."""
    t = cfg.train
    parts = [f"lr {t.lr:g} ({t.schedule}, warmup {t.warmup_steps})",
             f"batch {t.batch_size} x {t.grad_accum} accum"]
    parts.append(f"{t.max_steps:,} steps" if t.max_steps > 0 else f"{getattr(cfg, 'epochs', 0):g} epochs")
    if lora := getattr(cfg, "lora", None):
        parts.append(f"LoRA r {lora.r} alpha {lora.alpha:g} dropout {lora.dropout:g}")
    if hasattr(cfg, "group_size"):
        kl = f", kl_beta {cfg.kl_beta:g}" if cfg.kl_beta else ""
        parts.append(f"group {cfg.group_size}, temperature {cfg.temperature:g}, "
                     f"{cfg.max_new_tokens} new tokens{kl}")
    if hasattr(cfg, "beta"):
        parts.append(f"beta {cfg.beta:g}" + (f", rpo_alpha {cfg.rpo_alpha:g}" if cfg.rpo_alpha else ""))
    preset = getattr(cfg, "preset", "") or "none"
    return f"{stage}: preset {preset}" + (f" ({why})" if why else "") + " — " + ", ".join(parts)


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """`--set a=1 b=2 --set c=3` → {a: 1, b: 2, c: 3}: repeated --set flags add up; one key given two
    different values is an error (which one was meant?)."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = (x.strip() for x in item.split("=", 1))
        if k in out and out[k] != v:
            raise ValueError(f"--set gives {k!r} twice ({out[k]!r} and {v!r}): keep one")
        out[k] = v
    return out


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML or CLI value to the dataclass field's type."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        if isinstance(value, list):  # e.g. `str | list[str]`: keep a list a list
            args = [a for a in args if typing.get_origin(a) is list] or args
        return _coerce(value, args[0], key)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        return [_coerce(v, typing.get_args(typ)[0], key) for v in value]
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) else int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"config key {key!r}: cannot read {value!r} as {typ.__name__}") from None
    return value


def build(cls: type, values: dict, where: str = "") -> Any:
    """Instantiate dataclass `cls` from a dict, recursing into nested dataclass fields."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for k, v in values.items():
        if k not in names:
            raise ValueError(f"unknown config key {where}{k!r} (known: {', '.join(sorted(names))})")
        typ = hints[k]
        if dataclasses.is_dataclass(typ):
            kwargs[k] = build(typ, v or {}, f"{where}{k}.")
        else:
            kwargs[k] = _coerce(v, typ, where + k)
    return cls(**kwargs)


def apply_overrides(cfg: Any, overrides: dict[str, str]) -> Any:
    """Set `key=value` pairs on a (nested) dataclass; bare keys are looked up across its sections. The result
    is range-checked (`validate`): a setting that would train nonsense fails here, before any work starts."""
    for key, value in overrides.items():
        obj, name = _locate(cfg, key)
        setattr(obj, name, _coerce(value, typing.get_type_hints(type(obj))[name], key))
    return validate(cfg)


def _at_least(n):
    return (lambda v: v >= n), f"must be ≥ {n}"


_POSITIVE = ((lambda v: v > 0), "must be > 0")
_FRACTION = ((lambda v: 0 <= v < 1), "must be in [0, 1)")


def _one_of(*names):
    return (lambda v: str(v).lower() in names), f"must be one of {', '.join(names)}"


# Ranges by field name, wherever the field lives (train, model, lora, dpo, eval, prepare sections). Each would
# otherwise train nonsense quietly (grad_accum 0 saves an untrained model) or crash deep inside a stage
# (save_interval 0 divides by zero after hours of training).
RULES: dict[str, tuple] = {
    "batch_size": _at_least(1), "grad_accum": _at_least(1), "max_steps": _at_least(0), "lr": _POSITIVE,
    "min_lr": _at_least(0), "warmup_steps": _at_least(0), "schedule": _one_of("cosine", "constant", "wsd"),
    "decay_frac": ((lambda v: 0 <= v <= 1), "must be in [0, 1]"),
    "ce_chunk": _at_least(0),
    "weight_decay": _at_least(0), "beta1": _FRACTION, "beta2": _FRACTION, "grad_clip": _at_least(0),
    "log_interval": _at_least(1), "eval_interval": _at_least(0), "eval_batches": _at_least(1),
    "save_interval": _at_least(1), "keep_checkpoints": _at_least(1),
    "compile": _one_of("auto", "true", "false"),
    "dtype": _one_of("auto", "float32", "bfloat16"), "parallel": _one_of("ddp", "fsdp"),
    "n_layer": _at_least(1), "n_head": _at_least(1), "n_embd": _at_least(1), "vocab_size": _at_least(2),
    "block_size": _at_least(2), "dropout": _FRACTION, "pad_vocab_to": _at_least(1),
    "r": _at_least(1), "alpha": _POSITIVE, "beta": _POSITIVE, "rpo_alpha": _at_least(0), "epochs": _POSITIVE,
    "max_examples": _at_least(1), "val_examples": _at_least(0), "reference": _one_of("adapter", "copy"),
    "max_new_tokens": _at_least(1), "limit": _at_least(1), "shots": _at_least(0),
    "scoring": _one_of("letter", "text"), "shard_tokens": _at_least(1), "val_every": _at_least(1),
    "bpe_vocab_size": _at_least(2), "max_tokens": _at_least(1), "workers": _at_least(1),
    "log": (lambda v: all(k.strip() in ("tensorboard", "wandb") for k in v.split(",") if k.strip()),
            "comma-separated trackers from: tensorboard, wandb"),
    "group_size": _at_least(2), "temperature": _POSITIVE, "kl_beta": _at_least(0), "samples": _at_least(0),
}


def validate(cfg: Any, where: str = "") -> Any:
    """Check every field of a (nested) config dataclass against RULES; a ValueError names the key."""
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            validate(value, key + ".")
        elif value is not None and f.name in RULES and not isinstance(value, (list, dict)):
            ok, rule = RULES[f.name]
            if not ok(value):
                raise ValueError(f"config key {key!r} = {value!r}: {rule}")
    if {"n_embd", "n_head"} <= {f.name for f in dataclasses.fields(cfg)} and cfg.n_embd % cfg.n_head:
        raise ValueError(f"config key {where}n_embd = {cfg.n_embd} must be divisible by "
                         f"n_head = {cfg.n_head}")
    # the LoRA stages score answer positions only (no whole-vocabulary loss to chunk): never a silent no-op
    if hasattr(cfg, "lora") and getattr(getattr(cfg, "train", None), "ce_chunk", 0):
        raise ValueError(f"config key {where}train.ce_chunk = {cfg.train.ce_chunk}: applies to pre-training "
                         "only (set it under pretrain:)")
    return cfg


def _locate(cfg: Any, key: str) -> tuple[Any, str]:
    if "." in key:
        *path, name = key.split(".")
        obj = cfg
        for p in path:
            obj = getattr(obj, p, None)
            if obj is None or not dataclasses.is_dataclass(obj):
                raise ValueError(f"unknown config section in {key!r}")
        if name not in {f.name for f in dataclasses.fields(obj)}:
            raise ValueError(f"unknown config key {key!r} (section {'.'.join(path)} has: "
                             f"{', '.join(f.name for f in dataclasses.fields(obj))})")
        return obj, name
    hits = [(o, key) for o in _sections(cfg) if key in {f.name for f in dataclasses.fields(o)}
            and not dataclasses.is_dataclass(getattr(o, key))]
    if not hits:
        known = sorted({f.name for o in _sections(cfg) for f in dataclasses.fields(o)
                        if not dataclasses.is_dataclass(getattr(o, f.name))})
        section = f" in {type(cfg).__name__}" if type(cfg).__name__ else ""
        raise ValueError(f"unknown config key {key!r}{section} (known: {', '.join(known)})")
    if len(hits) > 1:
        raise ValueError(f"config key {key!r} is ambiguous; write it as section.{key}")
    return hits[0]


def _sections(cfg: Any) -> list[Any]:
    out = [cfg]
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out.extend(_sections(v))
    return out


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
