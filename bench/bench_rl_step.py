"""Where an RL step's time goes, with each of session 15's speed-ups beside what it replaced, in one run.

    python bench/bench_rl_step.py --model runs/demo/dpo --data runs/demo/world/rl_gsm8k.jsonl --steps 20

The RL stage (train/rl.py) spends a step sampling G answers for each question and then one forward/backward
over them (plus a no-grad forward with the adapter off, for the KL penalty). Rows, each timed over the same
steps of the tiny preset's settings:
- sampling: `torch.multinomial` vs inverse-CDF (model.sample), alone on (64, vocab) logits;
- generation: the LoRA model as it trains vs a merged copy refreshed per step (lora.merged_copy);
- LoRA layer: `y + B(A x) * s` vs one addmm (lora.LoRALinear.forward), forward + backward;
- loss: logits at every position vs only the answers' (`model(x, select=mask)`), forward + backward;
- session 17: the question prefilled for each of its G answers vs once (engine), and computed in the policy
  forward + backward for each answer vs once (model.Prefix).
Prints a Markdown table (ms per step, and the ratio).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from llmrecipe.train import stage_config
from llmrecipe.data.chat import collate, expand_shared
from llmrecipe.engine import Engine
from llmrecipe.eval.gsm8k import STOP
from llmrecipe.lora import LoRALinear, merged_copy, refresh_merged
from llmrecipe.model import sample
from llmrecipe.runtime import setup
from llmrecipe.train.rl import RLStage


def timed(fn, steps: int) -> float:
    """ms per call, after two warm-up calls."""
    for _ in range(2):
        fn()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps * 1000


def multinomial(logits, temperature, generator):  # the sampler before session 15
    return torch.multinomial((logits.float() / temperature).softmax(-1), 1, generator=generator)


def old_lora_forward(self, x):  # LoRALinear.forward before session 15
    y = F.linear(x, self.weight, self.bias)
    if self.enabled and not self.merged:
        y = y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling
    return y


def concatenated(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The RL batch as before session 17: each answer's row holds its whole question, then the answer."""
    x, y, adv, _, prefix = batch
    return (*collate(expand_shared(x, y, prefix), 0), adv)


def full_logits_loss(stage, batch):  # RLStage.loss before session 15: the LM head on every position
    x, y, adv = batch
    logits, _ = stage.model(x)
    mask = y != -100
    logp = torch.log_softmax(logits.float(), -1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(adv[:, None] * logp * mask).sum() / mask.sum()


def selected_logits_loss(stage, batch, prefix=None):
    x, y, adv = batch[:3]
    mask = y != -100
    logits, _ = stage.model(x, select=mask, prefix=prefix)
    logp = torch.log_softmax(logits.float(), -1).gather(-1, y[mask][:, None]).squeeze(-1)
    return -(adv[:, None].expand_as(mask)[mask] * logp).sum() / mask.sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the RL stage's input (a DPO adapter folder)")
    ap.add_argument("--data", required=True, help="GSM8K-schema problems (the world's rl_gsm8k.jsonl)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    cfg = stage_config("rl", args.preset)
    cfg.model, cfg.data = args.model, args.data
    cfg.anchor_beta = 0.0  # the answers' rows alone: what each speed-up replaced (the anchor came after them)
    rt = setup("cpu", "float32")
    stage = RLStage(cfg, rt)
    for n, p in stage.model.named_parameters():  # a trained adapter, as mid-run: B ≠ 0
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    G, Q = cfg.group_size, cfg.train.batch_size
    prompts = [stage.prompts[q] for q in range(Q) for _ in range(G)]
    rows = []
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(Q * G, stage.model.config.vocab_size) * 3
    rows.append(("sampling one token, 64 rows", timed(lambda: multinomial(logits, cfg.temperature, g), 200),
                 timed(lambda: sample(logits, cfg.temperature, generator=g), 200)))

    def generate(model):
        eng = Engine(model, stage.tokenizer, rt, batch_size=len(prompts))
        return lambda: eng.generate(prompts, cfg.max_new_tokens, temperature=0.0, stop=STOP)
    sampler = merged_copy(stage.model)
    gen_lora = timed(generate(stage.model), args.steps)
    gen_merged = timed(lambda: (refresh_merged(sampler, stage.model), generate(sampler)()), args.steps)
    rows.append(("generation (greedy, 64 answers ≤ 48 tokens)", gen_lora, gen_merged))
    P = max(map(len, prompts))  # the engine's prefill: left-padded prompts, their pads masked
    x = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    km = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])

    @torch.no_grad()
    def prefill(rows):
        rows = list(rows)
        return lambda: sampler.hidden(x[rows], positions=(km[rows].cumsum(-1) - 1).clamp(min=0),
                                      key_mask=km[rows])
    rows.append(("prefill: each question for each of its answers → once", timed(prefill(range(Q * G)), 50),
                 timed(prefill(range(0, Q * G, G)), 50)))
    stage.model.train()
    shared = stage.batch(0, 0)
    batch = concatenated(shared)

    def step(loss_fn):
        def run():
            loss_fn(stage, batch).backward()
            stage.model.zero_grad(set_to_none=True)
        return run
    new_forward = LoRALinear.forward
    LoRALinear.forward = old_lora_forward
    both_old = timed(step(full_logits_loss), args.steps)
    lora_old = timed(step(selected_logits_loss), args.steps)
    LoRALinear.forward = new_forward
    head_old = timed(step(full_logits_loss), args.steps)
    both_new = timed(step(selected_logits_loss), args.steps)
    rows.append(("policy forward + backward: LoRA as add-mul → addmm", lora_old, both_new))
    rows.append(("policy forward + backward: LM head everywhere → answers only", head_old, both_new))
    rows.append(("policy forward + backward: both", both_old, both_new))
    rows.append(("policy forward + backward: each question per answer → once (now)", both_new,
                 timed(step(lambda st, _: selected_logits_loss(st, shared, shared[4])), args.steps)))
    print(f"RL step pieces, preset {args.preset}: {Q} questions x {G} answers, "
          f"batch {tuple(batch[0].shape)} → {tuple(shared[0].shape)} + prefix {tuple(shared[4].idx.shape)}, "
          f"{torch.get_num_threads()} threads\n")
    print("| piece | before (ms) | now (ms) | before / now |\n|---|---:|---:|---:|")
    for name, before, now in rows:
        print(f"| {name} | {before:.1f} | {now:.1f} | {before / now:.2f}x |")


if __name__ == "__main__":
    main()
