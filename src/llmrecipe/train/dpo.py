"""DPO. The policy is the SFT model (adapter merged) plus a fresh LoRA; the reference is the same
weights with that LoRA disabled, so no second copy of the model is held. A batch is B pairs, chosen and
rejected concatenated into one forward, both continuing their prompt, which is computed once (model.Prefix:
prompts are ~77% of the tiny recipe's pair tokens); the loss is
−log σ(β[(log π_w − log ref_w) − (log π_l − log ref_l)]).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..chat import IGNORE
from ..checkpoint import load_model
from ..data.preference import EncodedPair, collate_pairs, load_pairs
from ..files import atomic_write, load_tensors
from ..lora import LoRAConfig, adapters_disabled, inject, trainable_summary
from ..model import Prefix
from ..runtime import Runtime
from .common import ChatSamples, ExampleBatches, finish_adapter_run, steps_for
from .loop import TrainConfig, launch, to_device


@dataclass
class DPOConfig:
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        batch_size=4, grad_accum=1, lr=5e-6, min_lr=5e-7, warmup_steps=0, schedule="constant",
        weight_decay=0.0, log_interval=10, eval_interval=0, save_interval=500))
    sft: str = ""  # adapter (or model) folder from `sft`; its chain is merged into the starting weights
    data: str = "HuggingFaceH4/ultrafeedback_binarized"  # hub id or local files (ultrafeedback, HH, TRL)
    split: str = "train_prefs"  # hub split (hub ids only)
    beta: float = 0.1  # DPO's temperature: how far the policy may move from the reference
    # RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization"; TRL's `rpo_alpha`): add
    # rpo_alpha x the chosen answers' mean per-token negative log-likelihood. DPO alone only asks that chosen
    # rise *relative to* rejected; when the two share all but a suffix it can satisfy that with a continuation
    # that ignores the prompt, and it lowers both likelihoods. The NLL term anchors the policy to the exact
    # chosen text. 0 = plain DPO.
    rpo_alpha: float = 0.0
    epochs: float = 2.0  # used when train.max_steps is 0
    reference: str = "adapter"  # adapter: the policy with its LoRA disabled | copy: a frozen deep copy
    precompute_reference: bool = False  # one pass over the data, cached in the run folder
    max_examples: int | None = None  # use only the first N pairs
    strict: bool = False  # a bad row is an error instead of skipped and counted
    preset: str = ""  # the preset these settings came from (recorded in the run folder's config.json)


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t log p(target_t) over positions where `mask` (B, T) is true, per row (B,). `logits` are (B, T, V),
    or only the masked positions' (N, V) as `model(x, select=mask)` returns them."""
    if logits.dim() == 3:
        logits = logits[mask]
    tok = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
    return tok.new_zeros(mask.size(0)).index_add(0, mask.nonzero()[:, 0], tok)


def dpo_loss(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO loss and the metrics DPO runs are read by, from policy/reference log-probs of chosen/rejected."""
    chosen_reward, rejected_reward = beta * (pc - rc), beta * (pr - rr)
    loss = -F.logsigmoid(chosen_reward - rejected_reward).mean()
    # TRL's metric names; detached tensors, read by the loop at logging steps only
    metrics = {"rewards/chosen": chosen_reward.mean(), "rewards/rejected": rejected_reward.mean(),
               "rewards/accuracy": (chosen_reward > rejected_reward).float().mean(),
               "rewards/margin": (chosen_reward - rejected_reward).mean(),
               "logps/chosen": pc.mean(), "logps/rejected": pr.mean()}
    return loss, {k: v.detach() for k, v in metrics.items()}


class DPOStage(ChatSamples):
    name = "dpo"

    def __init__(self, cfg: DPOConfig, rt: Runtime, run_dir: Path):
        self.cfg, self.rt = cfg, rt
        self.model, self.tokenizer = load_model(cfg.sft, merge_adapters=True)
        self.pairs, self.report = load_pairs(cfg.data, self.tokenizer, self.model.config.block_size,
                                             cfg.split, cfg.strict, cfg.max_examples)
        print(f"dpo data: {self.report}")
        self.sample_prompts = [p.prompt_ids for p in self.pairs[-3:]]
        self.ref_model = (copy.deepcopy(self.model).requires_grad_(False).eval() if cfg.reference == "copy"
                          else None)
        if cfg.reference not in ("adapter", "copy"):
            raise ValueError(f"reference must be 'adapter' or 'copy', not {cfg.reference!r}")
        inject(self.model, cfg.lora)
        print(trainable_summary(self.model))
        self.index = {id(p): i for i, p in enumerate(self.pairs)}
        self.batches = ExampleBatches(self.pairs, cfg.train, rt)
        if cfg.precompute_reference:  # the cache lives in the run folder, made once the data is read
            run_dir.mkdir(parents=True, exist_ok=True)
        self.ref_cache = (self._precompute(run_dir / "reference_logps.safetensors")
                          if cfg.precompute_reference else None)

    def _policy_logps(self, model, x, y, prefix: Prefix | None) -> torch.Tensor:
        mask = y != IGNORE
        # the replies' logits only; a shared prompt (collate_pairs) is computed once, its logits never
        logits, _ = model(x, select=mask, prefix=prefix)
        return sequence_logps(logits, y, mask)

    @torch.no_grad()
    def reference_logps(self, x, y, prefix: Prefix | None) -> torch.Tensor:
        if self.ref_model is not None:
            return self._policy_logps(self.ref_model.to(x.device), x, y, prefix)
        was_training = self.model.training
        self.model.eval()  # no dropout in the reference
        with adapters_disabled(self.model):
            out = self._policy_logps(self.model, x, y, prefix)
        self.model.train(was_training)
        return out

    def _precompute(self, path: Path) -> torch.Tensor:
        """(N, 2) reference log-probs of (chosen, rejected) for every pair, cached beside the run."""
        if path.is_file():
            cache = load_tensors(path)["logps"]
            if cache.shape[0] == len(self.pairs):
                return cache
        out = []
        self.model.to(self.rt.device)
        for i in range(0, len(self.pairs), 8):
            chunk = self.pairs[i:i + 8]
            x, y, prefix = to_device(collate_pairs(chunk, self.tokenizer.eot_id), self.rt.device)
            with self.rt.autocast():
                lp = self.reference_logps(x, y, prefix).float().cpu()
            out.append(torch.stack([lp[: len(chunk)], lp[len(chunk):]], dim=1))
        cache = torch.cat(out)
        atomic_write(path, lambda tmp: save_file({"logps": cache}, tmp))
        return cache

    def batch(self, step: int, micro: int):
        pairs: list[EncodedPair] = self.batches(step, micro)
        x, y, prefix = collate_pairs(pairs, self.tokenizer.eot_id)
        return x, y, torch.tensor([self.index[id(p)] for p in pairs]), prefix  # CPU; the loop copies it

    def loss(self, model, batch):
        x, y, ids, prefix = batch
        n = len(ids)
        policy = self._policy_logps(model, x, y, prefix)
        if self.ref_cache is not None:
            if self.ref_cache.device != policy.device:  # once: index on the device, no host round trip
                self.ref_cache = self.ref_cache.to(policy.device)
            ref = self.ref_cache[ids.to(policy.device)]
            rc, rr = ref[:, 0], ref[:, 1]
        else:
            ref = self.reference_logps(x, y, prefix)
            rc, rr = ref[:n], ref[n:]
        loss, metrics = dpo_loss(policy[:n], policy[n:], rc, rr, self.cfg.beta)
        if self.cfg.rpo_alpha:
            nll = -(policy[:n] / (y[:n] != IGNORE).sum(-1).clamp(min=1)).mean()
            loss = loss + self.cfg.rpo_alpha * nll
            metrics["nll_loss"] = nll.detach()
        return loss, metrics

    def units(self, batch) -> int:
        return len(batch[2])  # the loss is a mean over pairs

    def tokens(self, batch) -> int:
        return int((batch[1] != IGNORE).sum())

    def evaluate(self, model) -> dict[str, float]:
        return {}

    def finish(self, model, run_dir: Path) -> None:
        finish_adapter_run(self, model, run_dir, self.cfg.sft)


def run_dpo(cfg: DPOConfig, out: str | Path, resume: bool = False) -> dict:
    return launch("dpo", cfg, out, resume, DPOStage, ("sft", "the adapter folder from `llmrecipe sft`"),
                  steps_from=lambda stage: steps_for(len(stage.pairs), cfg.epochs, cfg.train))
