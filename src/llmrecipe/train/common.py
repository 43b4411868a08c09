"""What the LoRA stages (SFT, DPO, RL) share: their batches of examples, the replies they log, the end of
their run (the adapter, the tokenizer, the data report)."""
from __future__ import annotations

import math
from pathlib import Path

from ..data.order import EpochOrder, item_start
from ..engine import Engine
from ..files import atomic_write_json
from ..lora import save_adapter
from ..runtime import Runtime
from .loop import TrainConfig


def finish_adapter_run(stage, model, run_dir: Path, parent: str) -> None:
    """The end of a LoRA stage (SFT, DPO): the adapter on `parent`, the tokenizer, the data report."""
    save_adapter(run_dir, model, stage.cfg.lora, str(Path(parent).resolve()))
    stage.tokenizer.save(run_dir)
    atomic_write_json(run_dir / "data_report.json", vars(stage.report))


def chat_samples(model, tokenizer, rt, prompts: list[list[int]], max_new_tokens: int = 32) -> str:
    """Greedy replies to chat prompts (token ids through the one template, ending with the assistant marker)
    from the stage's own data: logged by the LoRA stages (SFT, DPO, RL) at each evaluation and at their last
    step, so the replies show what the data teaches. Greedy with its own generator: the run's RNG (and
    exact resume) is untouched."""
    outs = Engine(model, tokenizer, rt, batch_size=len(prompts)).generate(prompts, max_new_tokens,
                                                                          temperature=0.0)
    asked = [tokenizer.decode(p).split("<|user|>\n")[-1].split("<|endoftext|>")[0] for p in prompts]
    return "\n".join(f"  {q[-80:]!r} → {tokenizer.decode(o)[:100]!r}" for q, o in zip(asked, outs))


class ChatSamples:
    """`samples()` for the LoRA stages (SFT, DPO, RL): the loop logs it at evaluations and the last step;
    `sample_prompts` are three prompts of the stage's own data (held out where the stage holds some out)."""

    sample_prompts: list[list[int]] = []

    def samples(self, model) -> str:
        if not self.sample_prompts:
            return ""
        return chat_samples(model, self.tokenizer, self.rt, self.sample_prompts)


def steps_for(n_examples: int, epochs: float, tc: TrainConfig) -> int:
    return max(1, math.ceil(epochs * n_examples / (tc.batch_size * tc.grad_accum)))


class ExampleBatches:
    """Global item numbers → shuffled examples (a new order each epoch), rank-sliced like pre-training."""

    def __init__(self, examples: list, tc: TrainConfig, rt: Runtime):
        self.examples, self.tc, self.rt = examples, tc, rt
        self.order = EpochOrder(len(examples), tc.seed)

    def __call__(self, step: int, micro: int) -> list:
        start = item_start(step, micro, self.tc.batch_size, self.tc.grad_accum, self.rt.rank,
                           self.rt.world_size)
        return [self.examples[self.order[k]] for k in range(start, start + self.tc.batch_size)]
