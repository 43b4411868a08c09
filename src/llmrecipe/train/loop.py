"""The one training loop. Stages differ only in what a batch is and what the loss is (`Stage`); the
optimizer, schedule, accumulation, clipping, autocast, logging, evaluation, checkpoints and resume are here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from ..checkpoint import has_checkpoints, latest_checkpoint, load_checkpoint, save_checkpoint
from ..config import settings_line, to_dict, validate
from ..files import append_jsonl, atomic_write_text, folder_lock, read_jsonl
from ..progress import progress
from ..runtime import Runtime, setup
from ..track import Trackers


@dataclass
class TrainConfig:
    batch_size: int = 16  # sequences (pairs for DPO, questions for RL) per micro-batch and rank
    grad_accum: int = 32  # micro-batches per optimizer step, over all ranks (each rank does grad_accum / W)
    max_steps: int = 0  # pre-training: required; SFT/DPO: 0 means derive from epochs
    lr: float = 6e-4  # peak learning rate, reached after warmup_steps
    min_lr: float = 6e-5  # where the cosine or wsd schedule ends, at max_steps
    warmup_steps: int = 2000  # linear warm-up from 0 to lr
    # after the warm-up: cosine (to min_lr) | constant | wsd (warm-up, stable at lr, then a linear decay to
    # min_lr over the last decay_frac of max_steps: the modern pre-training runs' schedule)
    schedule: str = "cosine"
    decay_frac: float = 0.2  # wsd only: the share of max_steps spent decaying
    weight_decay: float = 0.1  # AdamW's, on ≥ 2-D weights only
    beta1: float = 0.9  # AdamW
    beta2: float = 0.95  # AdamW
    grad_clip: float = 1.0  # clip the global gradient norm to this (0: off)
    log_interval: int = 10  # steps between metrics.jsonl records (and the only host syncs)
    eval_interval: int = 1000  # steps between validation losses and samples (0: only at the end)
    eval_batches: int = 20  # validation micro-batches per evaluation
    save_interval: int = 5000  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept; older ones are pruned
    seed: int = 1337  # initial weights, data order, sampling: a run is a function of its seed
    device: str = "auto"  # auto (CUDA if present, else CPU) / cuda / cuda:N / cpu
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: str = "auto"  # auto: on for pre-training on CUDA (see use_compile) | true | false
    parallel: str = "ddp"  # with several ranks (torchrun): ddp | fsdp
    log: str = ""  # live trackers besides metrics.jsonl: tensorboard, wandb, or "tensorboard,wandb"
    # adamw / muon: the blocks' matrices by Muon (orthogonalised Nesterov momentum), the embeddings, head,
    # norms and biases by AdamW at `lr`
    optimizer: str = "adamw"
    muon_lr: float = 0.02  # Muon's peak learning rate (the schedule scales it as it scales lr)
    muon_momentum: float = 0.95  # Muon's Nesterov momentum
    # pre-training only: the loss over chunks of this many positions, each chunk's gradient computed at
    # once, so the (positions x vocabulary) fp32 logits are never held whole (ChunkedLinearCrossEntropy);
    # 0: off
    ce_chunk: int = 0


class Stage(Protocol):
    """What a training stage hands the loop.

    `batch` builds CPU tensors and runs on the loader thread, ahead of the GPU (so it must not touch the
    model or the global RNG); the loop pins them and copies them to the device. `loss` returns the mean
    over the micro-batch's `units` (tokens for SFT/pre-training, pairs for DPO) and metrics as detached
    0-d tensors: the loop never reads a device value except at a logging step.
    """

    name: str
    model: torch.nn.Module  # parameters with requires_grad=True are trained

    def batch(self, step: int, micro: int) -> Any: ...
    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...
    def units(self, batch: Any) -> int: ...
    def tokens(self, batch: Any) -> int: ...
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]: ...
    def finish(self, model: torch.nn.Module, run_dir: Path) -> None: ...


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `max_steps` (or constant, or wsd: stable,
    then linear decay to `min_lr` over the last `decay_frac` of the steps)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        decay_start = max(cfg.warmup_steps, cfg.max_steps - round(cfg.decay_frac * cfg.max_steps))
        if step < decay_start:
            return cfg.lr
        progress = min(1.0, (step - decay_start) / max(1, cfg.max_steps - decay_start))
        return cfg.lr + progress * (cfg.min_lr - cfg.lr)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on ≥2-D weights only (matmuls, embeddings), not on biases and norms. With
    `optimizer: muon`, the transformer blocks' matrices go to Muon instead (muon.py)."""
    if cfg.optimizer not in ("adamw", "muon"):
        raise ValueError(f"config key 'optimizer' = {cfg.optimizer!r}: must be adamw or muon")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.optimizer == "muon":
        from .muon import MuonAdamW, is_hidden_matrix

        hidden = [p for n, p in named if is_hidden_matrix(n, p)]
        rest = [(n, p) for n, p in named if not is_hidden_matrix(n, p)]
        groups = [{"params": hidden, "kind": "muon", "lr_ratio": cfg.muon_lr / cfg.lr, "weight_decay": 0.0,
                   "momentum": cfg.muon_momentum},
                  {"params": [p for _, p in rest if p.dim() >= 2], "kind": "adamw", "lr_ratio": 1.0,
                   "weight_decay": cfg.weight_decay},
                  {"params": [p for _, p in rest if p.dim() < 2], "kind": "adamw", "lr_ratio": 1.0,
                   "weight_decay": 0.0}]
        return MuonAdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    params = [p for _, p in named]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


class MetricsLog:
    """metrics.jsonl in the run folder; on resume, records after the restored step are dropped."""

    def __init__(self, path: Path, resume_step: int | None, tracker=None):
        self.path, self.kept, self.tracker = path, [], tracker
        if resume_step is None:
            path.unlink(missing_ok=True)
        elif path.exists():  # a torn last line (killed mid-write) is dropped; the rewrite is atomic
            # a damaged line is dropped with a note: every row after the checkpoint is redone anyway, and
            # a log must never block a resume from valid checkpoints
            self.kept = [r for r in read_jsonl(path, drop_bad=True)
                         if isinstance(r.get("step", 0), int) and r.get("step", 0) <= resume_step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in self.kept))

    def last(self) -> dict:
        """The kept records of the last logged step merged (train + validation): a resumed run that has
        no steps left returns the same summary as the run that was interrupted."""
        if not self.kept:
            return {}
        final = self.kept[-1]["step"]
        return {k: v for r in self.kept if r["step"] == final for k, v in r.items()}

    def write(self, record: dict) -> None:
        append_jsonl(self.path, [record])
        if self.tracker is not None:  # the same record, same names and step, to TensorBoard / W&B
            self.tracker.log(record)


class StepBatches:
    """Step s's micro-batches, built on a loader thread while step s-1 computes.

    The batches of a step are a pure function of (step, micro), so building them early changes nothing
    the run computes: determinism and exact resume hold. All of a step's batches are built before its
    first backward because the loss is normalised by the whole step's units (see `_step`). On CUDA they
    are pinned, so the copy to the device is asynchronous (`non_blocking` from pageable memory is not).
    """

    def __init__(self, stage: Stage, accum: int, device: torch.device, max_steps: int):
        self.stage, self.accum, self.device, self.max_steps = stage, accum, device, max_steps
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="loader")
        self.ahead: tuple[int, Future] | None = None

    def _build(self, step: int) -> tuple[list, list[int], int]:
        batches = [self.stage.batch(step, m) for m in range(self.accum)]
        units = [self.stage.units(b) for b in batches]  # counted here, on CPU tensors: no device sync
        tokens = sum(self.stage.tokens(b) for b in batches)
        if self.device.type == "cuda":
            batches = [_map_tensors(b, torch.Tensor.pin_memory) for b in batches]
        return batches, units, tokens

    def get(self, step: int) -> tuple[list, list[int], int]:
        """(device batches, units per micro-batch, tokens) of this rank's share of `step`; starts building
        `step + 1`. An on-policy stage (RL) samples its batches from the model being trained: they are
        built here, after the previous step's update, never ahead."""
        if getattr(self.stage, "on_policy", False):
            batches, units, tokens = self._build(step)
            return [to_device(b, self.device) for b in batches], units, tokens
        fut = self.ahead[1] if self.ahead and self.ahead[0] == step else self.pool.submit(self._build, step)
        nxt = step + 1
        self.ahead = (nxt, self.pool.submit(self._build, nxt)) if nxt < self.max_steps else None
        batches, units, tokens = fut.result()
        batches = [_map_tensors(b, lambda t: t.to(self.device, non_blocking=True)) for b in batches]
        return batches, units, tokens

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _map_tensors(batch: Any, fn) -> Any:
    """`fn` applied to every tensor of a batch: tuples, lists and dataclasses (model.Prefix) of them."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_map_tensors(b, fn) for b in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: _map_tensors(getattr(batch, f.name), fn)
                                             for f in dataclasses.fields(batch)})
    return batch


def to_device(batch: Any, device: torch.device) -> Any:
    return _map_tensors(batch, lambda t: t.to(device))


def launch(name: str, cfg, out: str | Path, resume: bool, make_stage: Callable[[Any, Runtime, Path], Stage],
           needs: tuple[str, str], steps_from: Callable[[Any], int] | None = None, note: str = "",
           resolved_extra: dict | None = None) -> dict:
    """The opening every training stage shares: check the settings, require the input it builds on
    (`needs`: the config field and what it is), set up the device, seed (the initial weights and LoRA
    matrices are part of the run's determinism), build the stage, print one settings line, run the loop.
    `steps_from(stage)` gives the step count when max_steps is 0 (epochs over the stage's data)."""
    validate(cfg)
    field, what = needs
    if not getattr(cfg, field):
        raise ValueError(f"{name} needs --{field}: {what}")
    if cfg.train.max_steps <= 0 and steps_from is None:
        raise ValueError(f"{name} needs train.max_steps > 0: --set max_steps=100")
    rt = setup(cfg.train.device, cfg.train.dtype)
    torch.manual_seed(cfg.train.seed)
    stage = make_stage(cfg, rt, Path(out))  # a stage that fails here (bad input) leaves no folder behind
    if cfg.train.max_steps <= 0:
        cfg.train.max_steps = steps_from(stage)
    if rt.is_main:
        print(settings_line(name, cfg) + note)
    return train(stage, cfg.train, rt, out, {**to_dict(cfg), **(resolved_extra or {})}, resume)


def train(stage: Stage, cfg: TrainConfig, rt: Runtime, run_dir: str | Path, resolved_config: dict,
          resume: bool = False) -> dict:
    """Run `stage` to `cfg.max_steps` on this process's rank; returns the last logged metrics.

    Rank 0 holds the run folder's lock throughout: a second run on the same folder is an error, not two
    writers pruning each other's checkpoints."""
    with folder_lock(run_dir) if rt.is_main else contextlib.nullcontext():
        return _train(stage, cfg, rt, Path(run_dir), resolved_config, resume)


def _train(stage: Stage, cfg: TrainConfig, rt: Runtime, run_dir: Path, resolved_config: dict,
           resume: bool) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.grad_accum % rt.world_size:
        raise ValueError(f"grad_accum {cfg.grad_accum} is not divisible by the {rt.world_size} ranks")
    accum = cfg.grad_accum // rt.world_size  # the global batch stays what the config says
    model = stage.model.to(rt.device)
    if rt.distributed and cfg.parallel == "fsdp" and cfg.optimizer == "muon":
        raise ValueError("optimizer=muon orthogonalises whole matrices and FSDP shards them across ranks: "
                         "use parallel=ddp with muon")
    if rt.distributed and cfg.parallel == "fsdp" and any(not p.requires_grad for p in model.parameters()):
        raise ValueError("parallel=fsdp is for full training (pretrain); LoRA stages use ddp")
    wrapped = rt.wrap(model, cfg.parallel)
    opt = make_optimizer(model, cfg, rt.device)
    step, elapsed_before, tokens_seen = 0, 0.0, 0
    if has_checkpoints(run_dir) and not resume:
        raise FileExistsError(f"{run_dir} already holds checkpoints: pass --resume to continue it, "
                              "or choose another --out")
    ckpt = latest_checkpoint(run_dir) if resume else None  # the newest that verifies; an error if none does
    if ckpt is not None:
        state = load_checkpoint(ckpt, wrapped, opt)
        step, elapsed_before, tokens_seen = state["step"], state["elapsed"], state["tokens_seen"]
        _check_resume(state.get("config"), resolved_config, ckpt, rt.is_main)
        if rt.is_main:
            print(f"resuming {stage.name} from {ckpt} (step {step})")
    if rt.is_main:
        atomic_write_text(run_dir / "config.json", json.dumps(resolved_config, indent=2))
    tracker = (Trackers(cfg.log, run_dir, stage.name, resolved_config, step if ckpt else None)
               if rt.is_main and cfg.log else None)
    log = MetricsLog(run_dir / "metrics.jsonl", step if ckpt else None, tracker) if rt.is_main else None
    fwd = torch.compile(wrapped) if use_compile(cfg, stage, rt) else wrapped
    last: dict = log.last() if log else {}
    t_start = t_window = time.time()
    window_tokens, paused = 0, 0.0  # paused: evaluation and checkpoint time inside the throughput window

    # the first step whose gradient norm was not finite, kept on the device (no sync per step) and read
    # where the loop reads anyway: at a logging step, and before anything is saved. The norm is the one
    # value every rank shares after the gradients' all-reduce, so every rank stops at the same point.
    first_bad = torch.full((), -1, dtype=torch.long, device=rt.device)

    def check_finite() -> None:
        bad = int(first_bad)
        if bad >= 0:
            kept = latest_checkpoint(run_dir, quiet=True) if has_checkpoints(run_dir) else None
            raise NonFiniteError(
                f"{stage.name}: the gradient norm became inf/nan at step {bad + 1} (loss "
                f"{last.get('loss')} at the last log): training stopped before saving anything from it; "
                + (f"the last good checkpoint is {kept} (--resume continues from it). " if kept else "")
                + "Lower the learning rate, or check the data and the starting weights")

    def checkpoint(at: int) -> None:
        check_finite()
        save_checkpoint(run_dir, at, wrapped, opt, dict(
            elapsed=elapsed_before + time.time() - t_start, tokens_seen=tokens_seen,
            data_position=at * cfg.grad_accum * cfg.batch_size, world_size=rt.world_size,
            config=resolved_config),
            keep=cfg.keep_checkpoints, write=rt.is_main)
        rt.barrier()

    loader = StepBatches(stage, accum, rt.device, cfg.max_steps)
    bar = progress(total=cfg.max_steps, initial=step, desc=stage.name, unit="step", disable=not rt.is_main)
    model.train()
    try:
        while step < cfg.max_steps:
            lr = lr_at(step, cfg)
            for g in opt.param_groups:  # Muon's groups keep their own peak: the schedule scales both alike
                g["lr"] = lr * g.get("lr_ratio", 1.0)
            batches, units, n_tokens = loader.get(step)
            metrics = _step(stage, fwd, wrapped, opt, batches, units, cfg, rt)
            bad_now = ~torch.isfinite(metrics["grad_norm"]) & (first_bad < 0)
            first_bad = torch.where(bad_now, torch.full_like(first_bad, step), first_bad)
            n_tokens *= rt.world_size
            tokens_seen, window_tokens = tokens_seen + n_tokens, window_tokens + n_tokens
            step += 1
            bar.update(1)
            if step % cfg.log_interval == 0 or step == cfg.max_steps:
                check_finite()
                metrics = rt.mean(metrics)  # the one host-device sync of a logging step
                now = time.time()
                tps = window_tokens / max(now - t_window - paused, 1e-9)
                last = dict(step=step, loss=round(metrics.pop("loss"), 6), lr=lr,
                            grad_norm=round(metrics.pop("grad_norm"), 6), tokens_per_sec=round(tps),
                            tokens=tokens_seen, elapsed=round(elapsed_before + now - t_start, 2),
                            **{k: round(v, 6) for k, v in metrics.items()})
                if (mfu := _mfu(stage, rt, tps)) is not None:
                    last["mfu"] = round(mfu, 4)
                t_window, window_tokens, paused = now, 0, 0.0
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
                if log:
                    log.write(last)
            t_pause = time.time()
            at_eval = cfg.eval_interval and (step % cfg.eval_interval == 0 or step == cfg.max_steps)
            if at_eval:
                val = _evaluate(stage, wrapped if cfg.parallel == "fsdp" else model, rt)
                if val and log:
                    log.write({"step": step, **val})
                    bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in val.items()))
                    last.update(val)
            # watch the model learn (nanoGPT, nanochat): at each evaluation, and always at the last step
            if rt.is_main and hasattr(stage, "samples") and (at_eval or step == cfg.max_steps):
                model.eval()
                text = stage.samples(model)
                model.train()
                if text:
                    bar.write(f"step {step} samples:\n{text}")
                    if tracker:
                        tracker.text("samples", text, step)
            if step % cfg.save_interval == 0 and step < cfg.max_steps:
                checkpoint(step)
            paused += time.time() - t_pause
    except KeyboardInterrupt:
        bar.close()
        checkpoint(step)  # (not if a step went non-finite: check_finite raises first)
        raise SystemExit(f"interrupted: saved a checkpoint at step {step}; rerun with --resume to continue")
    except RuntimeError as e:  # a peer died or hung (gloo/NCCL errors): fail clearly instead of hanging
        if not (rt.distributed and _PEER_LOST.search(str(e))):
            raise
        raise SystemExit(f"rank {rt.rank}: lost contact with another rank at step {step} "
                         f"({_PEER_LOST.search(str(e)).group(0)}); resume from the last checkpoint with "
                         "--resume") from None
    finally:
        loader.close()
        if tracker:
            tracker.close()
    bar.close()
    checkpoint(step)
    final = _unsharded(wrapped, model, rt) if rt.distributed and cfg.parallel == "fsdp" else model
    if rt.is_main:
        stage.finish(final, run_dir)
    rt.barrier()
    return last


# What a stage reads: resuming on other data (or from another model) would continue one run on two
# inputs, a result no one could reproduce. Every other difference (a longer max_steps) is said, not refused.
DATA_KEYS = ("data", "data_meta", "split", "anchor_data", "anchor_split", "base", "sft", "model")


def _flat(obj, where: str = "") -> dict:
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _flat(val, f"{where}{key}.").items()}
    return {where.rstrip("."): obj}


def _same(a, b) -> bool:
    if isinstance(a, str) and isinstance(b, str) and a != b and Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()  # runs/x/data and /abs/runs/x/data: one folder
    return a == b


def _check_resume(saved: dict | None, now: dict, ckpt: Path, main: bool) -> None:
    if not isinstance(saved, dict):
        return
    old, new = _flat(saved), _flat(now)
    diffs = [k for k in sorted(set(old) | set(new)) if not _same(old.get(k), new.get(k))
             and k.rsplit(".", 1)[-1] != "log"]
    data = [k for k in diffs if k.split(".")[0] in DATA_KEYS]
    if data:
        k = data[0]
        raise ValueError(f"--resume from {ckpt}: it was trained with {k} = {old.get(k)!r}, this run gives "
                         f"{new.get(k)!r}; resume with the same inputs, or start a new --out")
    if diffs and main:
        print("note: resuming with changed settings: " + "; ".join(
            f"{k} {old.get(k)!r} → {new.get(k)!r}" for k in diffs[:6]), file=sys.stderr)


class NonFiniteError(ValueError):
    """Training produced an inf/nan gradient: nothing after it is saved."""


_PEER_LOST = re.compile(r"Connection (reset|closed)[^.\n]*|[Tt]imed? ?out[^.\n]*|NCCL error[^.\n]*|"
                        r"Broken pipe[^.\n]*")


def _step(stage: Stage, fwd, wrapped, opt, batches: list, units: list[int], cfg: TrainConfig, rt: Runtime
          ) -> dict[str, torch.Tensor]:
    """One optimizer step over this rank's micro-batches; gradients sync on the last one only.

    The loss is normalised over the *whole* step: each micro-batch's mean loss is weighted by its share
    of the units (response tokens, pairs) of all micro-batches on all ranks. A mean of per-micro-batch
    means would give a token in a short answer more weight than one in a long answer (the bug TRL and
    transformers fixed with `num_items_in_batch`). DDP/FSDP average gradients over ranks, hence × W.
    Metrics stay on the device: no `.item()` here (each would stall the GPU's queue once per micro-step).
    """
    # torch.full launches a fill kernel; torch.tensor(x, device=cuda) would copy from pageable memory, a
    # synchronous cudaMemcpy that drains the GPU's queue every step (measured: 10% of an H100 pre-training
    # step)
    total = torch.full((), float(sum(units)), device=rt.device)
    if rt.distributed:
        torch.distributed.all_reduce(total)
    scale = rt.world_size / total
    sums: dict[str, torch.Tensor] = {}
    n = len(batches)
    for micro, (batch, n_units) in enumerate(zip(batches, units)):
        with _grad_sync(wrapped, rt, last=micro == n - 1):
            with rt.autocast():
                loss, metrics = stage.loss(fwd, batch)
            weighted = loss * (n_units * scale)
            weighted.backward()
        sums["loss"] = sums.get("loss", 0.0) + weighted.detach().float()
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + torch.as_tensor(v).detach().float() / n
    norm = torch.nn.utils.clip_grad_norm_([p for p in wrapped.parameters() if p.requires_grad],
                                          cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    opt.step()
    opt.zero_grad(set_to_none=True)
    sums["grad_norm"] = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    return sums


def _grad_sync(wrapped, rt: Runtime, last: bool):
    """Skip the gradient all-reduce (DDP) / reduce-scatter (FSDP2) on all but the last micro-step."""
    if not rt.distributed:
        return contextlib.nullcontext()
    if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2: a flag, not a context manager
        wrapped.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if last else wrapped.no_sync()


def use_compile(cfg: TrainConfig, stage: Stage, rt: Runtime) -> bool:
    """`compile: auto` compiles fixed-shape pre-training on CUDA only. LoRA stages see a new sequence length
    every batch; they stay eager unless asked (then torch.compile marks the length dynamic after the first
    recompile instead of recompiling each step). On CPU, compile costs more than it saves on short runs."""
    mode = str(cfg.compile).lower()
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"compile must be auto, true or false, not {cfg.compile!r}")
    if mode != "auto":
        return mode == "true"
    return rt.device.type == "cuda" and stage.name == "pretrain"


def _unsharded(wrapped, model, rt: Runtime):
    """A plain copy of an FSDP-trained GPT on rank 0 (gathering is a collective: every rank calls this)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from ..model import GPT

    sd = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not rt.is_main:
        return None
    plain = GPT(model.config)
    plain.load_state_dict(sd, strict=False)
    return plain


def _evaluate(stage: Stage, model: torch.nn.Module, rt: Runtime) -> dict[str, float]:
    model.eval()
    with torch.no_grad(), rt.autocast():
        out = stage.evaluate(model)
    model.train()
    return out


def _mfu(stage: Stage, rt: Runtime, tokens_per_sec: float) -> float | None:
    peak, per_token = rt.peak_flops, getattr(stage, "flops_per_token", None)
    if peak is None or per_token is None:
        return None
    return tokens_per_sec / rt.world_size * per_token / peak
