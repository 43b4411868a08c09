"""SFT: LoRA instruction tuning. A batch is right-padded chat examples; the loss is cross-entropy on
response tokens only (assistant content + end of turn), mean over the batch's response tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


from ..chat import IGNORE
from ..checkpoint import load_model
from ..data.chat import collate, collate_packed, load_chat, pack
from ..lora import LoRAConfig, inject, trainable_summary
from ..runtime import Runtime
from .common import ChatSamples, ExampleBatches, finish_adapter_run, steps_for
from .loop import TrainConfig, launch


@dataclass
class SFTConfig:
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        batch_size=8, grad_accum=1, lr=2e-4, min_lr=2e-5, warmup_steps=0, schedule="constant",
        weight_decay=0.0, log_interval=10, eval_interval=0, save_interval=500))
    base: str = ""  # model folder from `pretrain` (or any model/adapter folder)
    data: str = "HuggingFaceH4/ultrachat_200k"  # hub id or local parquet/jsonl/json files
    split: str = "train_sft"  # hub split (hub ids only)
    epochs: float = 3.0  # used when train.max_steps is 0
    max_examples: int | None = None  # use only the first N conversations
    val_examples: int = 0  # held out from the end of the data for validation loss
    strict: bool = False  # reject bad rows instead of skipping them
    preset: str = ""  # the preset these settings came from (recorded in the run folder's config.json)
    packing: bool = False  # concatenate short conversations up to the context (fewer pad tokens)
    # pack each micro-batch's conversations into as few rows as its longest is wide, each attending only to
    # itself (data.chat.collate_packed): the same loss, without the pads. Measured on CPU (the tiny preset
    # turns it on); on a GPU it trades the flash kernel for a masked one, unmeasured, so off by default.
    pack_rows: bool = False


class SFTStage(ChatSamples):
    name = "sft"

    def __init__(self, cfg: SFTConfig, rt: Runtime):
        self.cfg, self.rt = cfg, rt
        self.model, self.tokenizer = load_model(cfg.base)
        examples, self.report = load_chat(cfg.data, self.tokenizer, self.model.config.block_size, cfg.split,
                                          cfg.strict, cfg.max_examples)
        print(f"sft data: {self.report}")
        n_val = min(cfg.val_examples, len(examples) - 1)
        self.val = examples[len(examples) - n_val:] if n_val > 0 else []
        self.sample_prompts = [e.ids[: e.response_spans[0][0]] for e in examples[-3:] if e.response_spans]
        self.train_examples = examples[: len(examples) - n_val]
        if cfg.packing:
            n = len(self.train_examples)
            self.train_examples = pack(self.train_examples, self.model.config.block_size)
            print(f"packing: {n:,} conversations → {len(self.train_examples):,} sequences")
        self.batches = ExampleBatches(self.train_examples, cfg.train, rt)
        inject(self.model, cfg.lora)
        print(trainable_summary(self.model))

    def batch(self, step: int, micro: int):
        # CPU tensors; the loop copies them. Packed rows cost nothing measurable where nothing packs (every
        # conversation near the context: 48.1 vs 48.6 ms a step on ultrachat, bench/bench_batches.py)
        pack = collate_packed if self.cfg.pack_rows else collate
        return pack(self.batches(step, micro), self.tokenizer.eot_id)

    def loss(self, model, batch):
        x, y, *packed = batch
        kw = dict(zip(("positions", "segments"), packed))
        # mean over this micro-batch's response tokens; the prompt's logits are never computed
        return model(x, y, select=y != IGNORE, **kw)[1], {}

    def units(self, batch) -> int:
        return int((batch[1] != IGNORE).sum())  # response tokens: the ones the loss sees

    tokens = units

    def evaluate(self, model) -> dict[str, float]:
        if not self.val:
            return {}
        batches = (collate(self.val[i:i + 8], self.tokenizer.eot_id) for i in range(0, len(self.val), 8))
        losses = [self.loss(model, tuple(t.to(self.rt.device) for t in b))[0].item() for b in batches]
        return {"val_loss": sum(losses) / len(losses)}

    def finish(self, model, run_dir: Path) -> None:
        finish_adapter_run(self, model, run_dir, self.cfg.base)


def run_sft(cfg: SFTConfig, out: str | Path, resume: bool = False) -> dict:
    return launch("sft", cfg, out, resume, lambda cfg, rt, _: SFTStage(cfg, rt),
                  ("base", "a model folder from `llmrecipe pretrain`"),
                  steps_from=lambda stage: steps_for(len(stage.train_examples), cfg.epochs, cfg.train))

