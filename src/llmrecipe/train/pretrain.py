"""Pre-training. A batch is B windows of T+1 tokens from the shards; the loss is next-token CE."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import save_model
from ..data.loader import TokenWindows, shard_paths
from ..data.order import item_start
from ..engine import Engine
from ..files import read_json
from ..model import GPT, GPTConfig
from ..runtime import Runtime
from ..tokenizer import load_from_dir
from .loop import TrainConfig, launch


@dataclass
class PretrainConfig:
    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: str = ""  # a folder written by `llmrecipe prepare`
    preset: str = ""  # recorded in the model folder: later stages default to the same preset


class PretrainStage:
    name = "pretrain"

    def __init__(self, cfg: PretrainConfig, rt: Runtime):
        self.cfg, self.rt = cfg, rt
        self.tokenizer = load_from_dir(cfg.data)
        if self.tokenizer.vocab_size > cfg.model.vocab_size:
            raise ValueError(f"{cfg.data}: tokenizer has {self.tokenizer.vocab_size} tokens but the model's "
                             f"vocab_size is {cfg.model.vocab_size}: --set vocab_size="
                             f"{self.tokenizer.vocab_size} (or --preset gpt2-124m)")
        tc, T = cfg.train, cfg.model.block_size
        item_start(0, 0, tc.batch_size, tc.grad_accum, rt.rank, rt.world_size)  # checks accum vs ranks early
        self.train_data = TokenWindows(cfg.data, "train", T, tc.seed, cfg.model.vocab_size)
        self.val_data = None  # a corpus too small for a validation split trains without one (and says so)
        if shard_paths(Path(cfg.data), "val"):
            self.val_data = TokenWindows(cfg.data, "val", T, tc.seed, cfg.model.vocab_size, shuffle=False)
        elif tc.eval_interval:
            print(f"note: {cfg.data} has no validation shard: no validation loss in this run",
                  file=sys.stderr)
        self.model = GPT(cfg.model)
        n = self.model.num_params()
        # PaLM appendix B: 6N per token for the matmuls + attention's 12·L·C·T
        self.flops_per_token = 6 * n + 12 * cfg.model.n_layer * cfg.model.n_embd * T
        print(f"model: {n:,} parameters; data: {self.train_data.num_windows:,} training windows of {T} "
              "tokens")

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        tc = self.cfg.train
        start = item_start(step, micro, tc.batch_size, tc.grad_accum, self.rt.rank, self.rt.world_size)
        return self.train_data.batch(start, tc.batch_size)  # CPU; the loop pins and copies it

    def loss(self, model, batch):
        x, y = batch
        return model(x, y, ce_chunk=self.cfg.train.ce_chunk)[1], {}

    def units(self, batch) -> int:
        return batch[0].numel()  # every position is a target

    tokens = units

    def evaluate(self, model) -> dict[str, float]:
        if self.val_data is None:
            return {}
        B, n_val = self.cfg.train.batch_size, self.val_data.num_windows
        losses = []
        for i in range(min(self.cfg.train.eval_batches, -(-n_val // B))):
            x, y = self.val_data.batch(i * B, B)
            losses.append(model(x.to(self.rt.device), y.to(self.rt.device))[1].float())
        val = torch.stack(losses).mean().item()  # one sync for the whole evaluation
        return {"val_loss": val, "val_ppl": float(torch.tensor(val).exp())}

    def samples(self, model) -> str:
        """Greedy continuations of fixed prompts, printed and logged at each evaluation (as nanoGPT and
        nanochat do): a person watching a day-long run sees the model learn. Greedy and with its own
        generator, so the run's RNG, and exact resume, are untouched."""
        if self.rt.distributed and self.cfg.train.parallel == "fsdp":
            return ""  # sharded weights: sampling would need every rank
        # the first 8 tokens of three validation windows (training windows without a validation split):
        # beginnings the corpus teaches, so the continuations show the model learning its data
        data = self.val_data or self.train_data
        prompts = [data.window(k)[:8].tolist() for k in range(min(3, data.num_windows))]
        outs = Engine(model, self.tokenizer, self.rt, batch_size=len(prompts)).generate(prompts, 24,
                                                                                       temperature=0.0)
        return "\n".join(f"  {self.tokenizer.decode(p)!r} → {self.tokenizer.decode(o)[:120]!r}"
                          for p, o in zip(prompts, outs))

    def finish(self, model, run_dir: Path) -> None:
        save_model(run_dir, model, self.tokenizer, {"stage": "pretrain", "data": str(self.cfg.data),
                                                             "preset": self.cfg.preset})


def run_pretrain(cfg: PretrainConfig, out: str | Path, resume: bool = False) -> dict:
    if cfg.data and not Path(cfg.data).is_dir():
        raise FileNotFoundError(f"--data {cfg.data}: no such folder")
    meta = Path(cfg.data) / "meta.json"
    return launch("pretrain", cfg, out, resume, lambda cfg, rt, _: PretrainStage(cfg, rt),
                  ("data", "a folder written by `llmrecipe prepare`"),
                  note=f"; model {cfg.model.n_layer} layers x {cfg.model.n_embd}",
                  resolved_extra={"data_meta": read_json(meta) if cfg.data and meta.is_file() else None})
