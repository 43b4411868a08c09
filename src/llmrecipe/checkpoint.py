"""One checkpoint format for every stage: safetensors for tensors, JSON for everything else.

A model folder (what `--model` / `--base` point at) holds `model.safetensors`, `model.json` (GPTConfig)
and the tokenizer. A training checkpoint (`checkpoints/step_NNNNNNN/`) holds the trainable parameters,
the optimizer state, RNG states and `state.json` (step, data position, resolved config, and the size and
SHA-256 of every file beside it). Checkpoint folders are written under a temporary name, fsynced, renamed
into place, and the folder entry fsynced, before any older one is pruned; `checkpoints/latest` names the
newest, but resuming does not trust it: it scans for the newest checkpoint that verifies, and says which
it skipped and why. Nothing here unpickles.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from .files import (atomic_write_json, atomic_write_text, fsync_path, load_tensors, read_json, save_tensors,
                    sha256_file, unique_tensors, verify_checksum, write_checksums)
from .lora import load_adapter, merge, read_adapter_config
from .model import GPT, GPTConfig, pad_vocab_rows
from .tokenizer import Tokenizer, load_from_dir


def save_model(directory: str | Path, model: GPT, tokenizer: Tokenizer, extra: dict | None = None) -> None:
    directory = Path(directory)
    save_tensors(directory / "model.safetensors", model.state_dict(), {"format": "pt"})
    write_checksums(directory, ["model.safetensors"])
    atomic_write_json(directory / "model.json", {"config": model.config.to_dict(), **(extra or {})})
    tokenizer.save(directory)


def adapter_chain(path: str | Path) -> tuple[Path, list[Path]]:
    """(root model folder, adapters from the root up to `path`) by following base_model_name_or_path; a chain
    that comes back to an adapter it passed (one naming itself as its base) is an error, not a hang."""
    chain, p = [], Path(path).resolve()
    while (p / "adapter_config.json").is_file() and not (p / "model.json").is_file():
        if p in chain:
            raise ValueError(f"{path}: its adapter chain loops at {p} (an adapter recorded as its own base)")
        chain.append(p)
        _, base = read_adapter_config(p)
        p = Path(base).resolve()
    return p, chain[::-1]


def weights_fingerprint(directory: str | Path, adapter: str | Path | None = None) -> str:
    """SHA-256 over the weight files a model (and adapter) loads: the base's and every adapter's in the
    chain. Caches of results (eval records) key on it, so a model retrained into the same folder is never
    answered from its predecessor's records."""
    root, chain = adapter_chain(adapter or directory)
    if adapter:
        _, own = adapter_chain(directory)
        chain = [a for a in own if a not in chain] + chain
    files = [root / "model.safetensors"] + [a / "adapter_model.safetensors" for a in chain]
    h = hashlib.sha256()
    for f in files:
        h.update(sha256_file(f).encode() if f.is_file() else b"missing")
    return h.hexdigest()[:16]


def load_model(directory: str | Path, device: str | torch.device = "cpu", adapter: str | Path | None = None,
               merge_adapters: bool = True) -> tuple[GPT, Tokenizer]:
    """A model folder, or an adapter folder (its base chain is loaded and merged), plus an optional adapter.

    With `merge_adapters` the result is a plain GPT (fast inference); otherwise the last adapter stays
    a live LoRA layer.
    """
    directory = Path(directory)
    if adapter is not None:  # it must have been trained on `directory` itself
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"--adapter {adapter}: not an adapter folder (no adapter_config.json)")
        root, chain = adapter_chain(adapter)
        model_root, model_chain = adapter_chain(directory)
        if (root, chain[:-1]) != (model_root, model_chain):
            path = " → ".join(str(x) for x in [root, *chain])
            if root == model_root and chain[: len(model_chain)] == model_chain:
                # --model runs/base --adapter runs/dpo: DPO was trained on the SFT merge; applying it to
                # the bare base silently drops the SFT step (IFEval analog 3% instead of 65%): load the chain
                parent = chain[-2] if len(chain) > 1 else root
                print(f"note: {adapter} was trained on {parent}, not on {directory}: "
                      f"loading its whole chain ({path})")
                return load_model(adapter, device, merge_adapters=merge_adapters)
            raise ValueError(f"adapter {adapter} was not trained on {directory} (its chain: {path}); "
                             f"pass the model it was trained on, or the adapter folder alone")
    if (directory / "adapter_config.json").is_file() and not (directory / "model.json").is_file():
        adapter_chain(directory)  # a looping chain is an error before it recurses
        _, base = read_adapter_config(directory)
        model, tok = load_model(base, device, merge_adapters=True)
        load_adapter(model, directory)
    else:
        meta_path, weights = directory / "model.json", directory / "model.safetensors"
        if not meta_path.is_file() or not weights.is_file():
            raise FileNotFoundError(f"{directory}: not a model folder (needs model.json and "
                                    "model.safetensors) nor an adapter folder (adapter_config.json)")
        model = GPT(read_model_config(meta_path))
        verify_checksum(weights)
        load_into(model, load_tensors(weights), str(weights), strict=True)
        tok = load_from_dir(directory)
    if adapter is not None:
        merge(model)
        load_adapter(model, adapter)
    if merge_adapters:
        merge(model)
    return model.to(device), tok


def read_model_config(meta_path: Path) -> GPTConfig:
    """GPTConfig from a model.json, every problem one line naming the file and the field."""
    config = read_json(meta_path).get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{meta_path}: no 'config' object (not a model.json written by llmrecipe?)")
    try:
        return GPTConfig(**config)
    except TypeError as e:  # an unknown or missing key
        raise ValueError(f"{meta_path}: field 'config': {str(e).replace('GPTConfig.__init__() ', '')}"
                         ) from None


def model_record(directory: str | Path) -> tuple[dict, str | None]:
    """(GPTConfig as a dict, the preset it was trained with or None) of a model or adapter folder, following
    an adapter's base chain; reads JSON only (no weights), so a command can choose its settings first."""
    root, chain = adapter_chain(directory)
    meta_path = root / "model.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{root}: not a model folder (needs model.json and model.safetensors) "
                                "nor an adapter folder (adapter_config.json)")
    meta = read_json(meta_path)
    read_model_config(meta_path)  # a damaged model.json is one line naming it, here before any work

    def run_preset(folder: Path) -> str | None:  # a stage's run folder: its resolved config, preset included
        f = folder / "config.json"
        return read_json(f).get("preset") if f.is_file() else None
    # the nearest record wins: the folder itself, then each base down the chain
    found = [run_preset(f) for f in reversed(chain)] + [meta.get("preset"), run_preset(root)]
    return meta["config"], next((p for p in found if p), None)


def save_hf(directory: str | Path, model: GPT, eot_id: int | None = None) -> None:
    """The weights as a stock Hugging Face model folder (needs `transformers`): `GPT2LMHeadModel` for GPT-2,
    `LlamaForCausalLM` or `Qwen3ForCausalLM` for the modern switches; `llmrecipe export` adds the tokenizer,
    chat template and generation config (export.py)."""
    import transformers

    from .model import hf_config, llama_config, stock_architecture, to_hf_state_dict, to_llama_state_dict

    arch = stock_architecture(model.config)
    ids = {} if eot_id is None else dict(bos_token_id=eot_id, eos_token_id=eot_id)
    if arch == "GPT2LMHeadModel":
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**hf_config(model.config), **ids}))
        hf.load_state_dict(to_hf_state_dict(model), strict=False)
    else:
        kind = transformers.Qwen3Config if arch == "Qwen3ForCausalLM" else transformers.LlamaConfig
        hf = getattr(transformers, arch)(kind(**llama_config(model.config), **ids))
        missing, unexpected = hf.load_state_dict(to_llama_state_dict(model), strict=False)
        if unexpected or [k for k in missing if not (model.config.tie_embeddings and k == "lm_head.weight")]:
            raise ValueError(f"{arch}: parameters not matched: {missing + unexpected}")
        if model.config.tie_embeddings:
            hf.tie_weights()
    hf.save_pretrained(str(directory))


def check_tensors(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], source: str) -> None:
    for k, v in sd.items():
        if k not in own:
            raise ValueError(f"{source}: unexpected tensor {k!r}")
        if v.shape != own[k].shape:
            raise ValueError(f"{source}: {k!r} has shape {tuple(v.shape)}, model expects "
                             f"{tuple(own[k].shape)}")


def load_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str, strict: bool) -> None:
    """Load `sd` into `model`, tolerating the tied head; errors name the file and the tensor."""
    own = model.state_dict()
    if isinstance(model, GPT):
        sd = pad_vocab_rows(sd, model.config)
    check_tensors(own, sd, source)
    missing = set(own) - set(sd) - {"lm_head.weight"}
    if strict and missing:
        raise ValueError(f"{source}: missing tensors {sorted(missing)[:5]}")
    model.load_state_dict(sd, strict=False)


# ---- training checkpoints ----
# Full (unsharded) state dicts keyed by parameter name, through torch.distributed.checkpoint's state_dict
# API: the same files whether written by 1 process, W DDP ranks or W FSDP shards, and loadable by any.

_FULL = dict(full_state_dict=True, cpu_offload=True)


def _gather(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Trainable weights and optimizer state, gathered in full (a collective under FSDP: call on every
    rank)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    inner = getattr(model, "module", model)
    trainable = {n for n, p in inner.named_parameters() if p.requires_grad}
    sd = get_model_state_dict(model, options=StateDictOptions(**_FULL))
    osd = get_optimizer_state_dict(model, opt, options=StateDictOptions(**_FULL))
    return {k: v for k, v in sd.items() if k in trainable}, osd


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    state: dict, keep: int = 2, write: bool = True) -> Path:
    """Write checkpoints/step_N durably (from the rank with `write`), point `latest` at it, prune to `keep`.

    Order matters for a kill at any instant: files written and fsynced in a temporary folder, state.json
    (with every file's size and hash) last, the folder renamed and its parent fsynced; only then is
    `latest` moved and are older checkpoints removed. Pruning only ever removes checkpoints of earlier
    steps than this one: a stale higher-numbered folder (from before a resume) never pushes out new ones.
    """
    weights, osd = _gather(model, opt)
    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / f"step_{step:07d}"
    if not write:
        return final
    tmp = ckpt_root / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(unique_tensors(weights), tmp / "trainable.safetensors")
    opt_tensors = {f"{name}::{k}": (v if torch.is_tensor(v) else torch.tensor(v)).contiguous()
                   for name, st in osd["state"].items() for k, v in st.items()}
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, tmp / "rng.safetensors")
    files = {}
    for f in sorted(tmp.iterdir()):
        fsync_path(f)
        files[f.name] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    record = {**state, "step": step, "param_groups": osd["param_groups"], "files": files}
    record["state_sha256"] = _state_digest(record)  # state.json vouches for the files, and this for it
    (tmp / "state.json").write_text(json.dumps(record, indent=2))
    fsync_path(tmp / "state.json")
    fsync_path(tmp)
    if final.exists():  # a checkpoint of the same step from before a resume: replaced, never half-replaced
        old = ckpt_root / f".old_step_{step:07d}"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(final)
    fsync_path(ckpt_root)
    atomic_write_text(ckpt_root / "latest", final.name + "\n")
    # by the step recorded inside each folder, not its name: a folder named step_90 that holds step 40
    # is an older checkpoint and goes like one
    earlier = sorted((p for p in _step_dirs(ckpt_root) if p != final and _recorded_step(p) < step),
                     key=_recorded_step)
    for old in earlier[: max(0, len(earlier) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


class CheckpointError(ValueError):
    """A run folder whose checkpoints all fail to verify: resuming would silently restart from step 0."""


_STEP = re.compile(r"step_(\d+)$")


def _step_of(path: Path) -> int:
    return int(_STEP.match(path.name).group(1))


def _state_digest(state: dict) -> str:
    body = {k: v for k, v in state.items() if k != "state_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _recorded_step(path: Path) -> int:
    """The step state.json records (the folder's name when it cannot be read)."""
    try:
        step = json.loads((path / "state.json").read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        step = None
    return step if isinstance(step, int) else _step_of(path)


def _step_dirs(ckpt_root: Path) -> list[Path]:
    """step_N folders, oldest first (temporary `.tmp_step_N` ones are half-written, never candidates)."""
    if not ckpt_root.is_dir():
        return []
    return sorted((p for p in ckpt_root.iterdir() if p.is_dir() and _STEP.match(p.name)), key=_step_of)


def has_checkpoints(run_dir: str | Path) -> bool:
    """Whether the run folder holds any checkpoint folder, valid or not (so it must not start over)."""
    return bool(_step_dirs(Path(run_dir) / "checkpoints"))


def verify_checkpoint(path: Path) -> str | None:
    """None if the checkpoint is complete and intact, else why not (checked against state.json's manifest)."""
    try:
        state = json.loads((path / "state.json").read_text())
    except FileNotFoundError:
        return "no state.json (an incomplete write)"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"state.json is damaged ({e})"
    if not isinstance(state, dict):
        return "state.json is not a JSON object (damaged)"
    if state.get("step") != _step_of(path):
        return f"state.json records step {state.get('step')!r}, the folder is {path.name} (stale or edited)"
    if "state_sha256" in state and state["state_sha256"] != _state_digest(state):
        return "state.json does not match its own SHA-256 (edited or damaged)"
    needed = ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors")
    files = state.get("files") or {n: None for n in needed}  # checkpoints from before the manifest: presence
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if want is None:
            continue
        if f.stat().st_size != want["bytes"]:
            return f"{name} has {f.stat().st_size:,} bytes, state.json says {want['bytes']:,} (truncated?)"
        if sha256_file(f) != want["sha256"]:
            return f"{name} does not match its SHA-256 in state.json (damaged)"
    return None


def latest_checkpoint(run_dir: str | Path, quiet: bool = False) -> Path | None:
    """The newest checkpoint that verifies, found by scanning (the `latest` pointer may be missing, stale
    or damaged); None when the run folder holds no checkpoint at all. Skipped ones are named on stderr;
    when checkpoints exist but none verifies, a CheckpointError: the run must not restart from 0 unasked."""
    dirs = _step_dirs(Path(run_dir) / "checkpoints")
    reasons = []
    for path in reversed(dirs):
        why = verify_checkpoint(path)
        if why is None:
            for r in reasons if not quiet else []:
                print(f"note: skipped checkpoint {r}", file=sys.stderr)
            return path
        reasons.append(f"{path}: {why}")
    if dirs:
        raise CheckpointError(f"{run_dir}: no checkpoint verifies ({'; '.join(reasons)}); refusing to "
                              f"restart from step 0: use another --out, or remove {run_dir}/checkpoints")
    return None


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Restore trainable weights, optimizer and RNG from `path` (on every rank); returns its state.json."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    state = json.loads((path / "state.json").read_text())
    weights = load_tensors(path / "trainable.safetensors")
    check_tensors(getattr(model, "module", model).state_dict(), weights, str(path / "trainable.safetensors"))
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    opt_state: dict[str, dict] = {}
    for key, v in load_tensors(path / "optimizer.safetensors").items():
        name, k = key.split("::", 1)
        # safetensors hands back buffers at whatever address Python's allocator gave (measured: 4 to 60
        # bytes past a 64-byte boundary); an uninterrupted run's moments sit in torch's 64-byte aligned
        # storage. The optimizer keeps these tensors and updates them in place for the rest of the run, so
        # a kernel that takes another path for unaligned data would make a resumed run differ from the
        # uninterrupted one in the last bits. A copy into torch's allocator removes that difference.
        opt_state.setdefault(name, {})[k] = v.clone(memory_format=torch.contiguous_format)
    set_optimizer_state_dict(model, opt, {"state": opt_state, "param_groups": state["param_groups"]},
                             options=StateDictOptions(full_state_dict=True))
    rng = load_tensors(path / "rng.safetensors")
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state
