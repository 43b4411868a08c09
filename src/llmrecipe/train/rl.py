"""Reinforcement learning with verifiable rewards (GSM8K-style word problems).

The variant is the on-policy one nanochat uses, which is GRPO (DeepSeekMath, Shao et al. 2024) with one
gradient step per sampled batch: for each question, sample G answers from the current policy; reward 1
when the GSM8K suite's own strict extraction matches the gold answer, else 0; advantage = reward − the
group's mean (optionally ÷ its std, `scale_rewards`, as DeepSeekMath does; Dr. GRPO, Liu et al. 2025, argues
the division biases towards easy and hard questions, so it is off by default); loss = −advantage · log π of
each sampled answer token, averaged over all answer tokens of the step. With one update per batch the
policy that sampled is the policy being updated, so GRPO's importance ratio is exactly 1 and its clipping
never acts: dropping them is not an approximation. An optional KL penalty to the starting model (k3
estimator, as GRPO) uses the same weights with the adapter disabled, like DPO's reference.

A group whose answers are all right or all wrong has zero advantage everywhere: it teaches nothing, and
costs only its sampling. The trainable part is a fresh LoRA on the input model, saved as a PEFT adapter.

The reward speaks only of word problems, and the KL above only of the answers to them; the adapter moves
weights every prompt shares. On the tiny world the RL policy drifted on instructions it was never asked
(all capitals −22 points on one seed; BENCHMARKS.md): the "alignment tax" InstructGPT (Ouyang et al.
2022) paid down by mixing pre-training gradients into PPO ("PPO-ptx"). Here the mix is an anchor: a few
chat conversations per micro-batch (by default the recipe's SFT data, less those whose replies the reward
would score: those are RL's to change), teacher-forced, whose reply tokens add anchor_beta · KL(π_start ‖
π) over the whole vocabulary — distillation from the starting model, so whatever the earlier stages taught
is kept where RL has nothing to say, rather than pulled back towards the SFT data's own answers as an NLL
term would. It rides in the same forward as the RL rows (one forward, one backward: DDP sees one graph) as
prefix rows that no answer continues; the no-grad reference forward covers it too.

Each question is computed once for its G answers (model.Prefix): the question is ~65% of a row's tokens in
the tiny recipe, and the policy forward, its backward and the reference forward were each paying for it G
times.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import torch

from ..chat import IGNORE, encode_chat
from ..checkpoint import load_model
from ..data.chat import collate, collate_shared, load_chat
from ..data.sources import DataError, iter_rows
from ..engine import Engine
from ..eval.gsm8k import GSM8K, INVALID, STOP, extract_strict, gold_answer
from ..lora import (LoRAConfig, adapters_disabled, inject, merged_copy, refresh_merged,
                    trainable_summary)
from ..runtime import Runtime
from .common import ChatSamples, ExampleBatches, finish_adapter_run
from .loop import TrainConfig, launch

HUB = ("openai/gsm8k", "main")


@dataclass
class RLConfig:
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    # batch_size = questions per micro-batch; each is answered group_size times
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        batch_size=4, grad_accum=4, lr=1e-5, min_lr=1e-6, warmup_steps=0, schedule="constant",
        weight_decay=0.0, max_steps=200, log_interval=5, eval_interval=0, save_interval=50))
    model: str = ""  # the starting model: a model or adapter folder (its chain is merged), usually DPO's
    data: str = "openai/gsm8k"  # hub id, or local .jsonl/.parquet files in GSM8K's schema (question, answer)
    split: str = "train"  # hub split (hub ids only)
    group_size: int = 8  # answers sampled per question (GRPO's G); advantages are relative to the group
    max_new_tokens: int = 256  # answer budget per sample
    temperature: float = 1.0  # sampling temperature of the answers
    scale_rewards: bool = False  # divide advantages by the group's std (DeepSeekMath) or not (Dr. GRPO)
    kl_beta: float = 0.0  # weight of the KL penalty to the starting model (0: none, as nanochat)
    max_examples: int | None = None  # use only the first N problems
    # the anchor (module docstring): KL to the starting model on chat conversations; 0 turns it off
    anchor_beta: float = 0.0
    anchor_data: str = ""  # conversations in ultrachat's schema; `llmrecipe run` passes the recipe's SFT data
    anchor_split: str = "train_sft"  # hub split of anchor_data (hub ids only)
    anchor_batch: int = 8  # conversations per micro-batch, beside batch_size × group_size answers
    preset: str = ""


def load_problems(spec: str, split: str, limit: int | None) -> list[dict]:
    """GSM8K rows (question, answer ending '#### N') as {question, gold}; bad rows name their file and row."""
    rows = iter_rows(HUB[0], split, HUB[1]) if spec == HUB[0] else iter_rows(spec, split)
    out = []
    for row in rows:
        q, a = row.data.get("question"), row.data.get("answer")
        if not isinstance(q, str) or not isinstance(a, str) or "####" not in a:
            raise DataError(f"{row.where('answer')}: expected 'question' and an 'answer' ending '#### N'")
        gold = gold_answer(a)
        if not re.fullmatch(r"-?\$?[0-9.,]*[0-9]", gold):  # GSM8K's extraction reads only numbers
            raise DataError(f"{row.where('answer')}: the answer after '####' is {gold!r}, not a number: no "
                            "sampled answer could ever be rewarded; fix or drop the row")
        out.append({"id": len(out), "question": q, "gold": gold})
        if limit and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{spec}: no problems")
    return out


def rewards_for(problems: list[dict], outputs: list[str]) -> torch.Tensor:
    """1.0 where the GSM8K suite's record says correct (its strict extraction vs the gold), else 0.0."""
    return torch.tensor([float(GSM8K.record(p, o)["correct"]) for p, o in zip(problems, outputs)])


def group_advantages(rewards: torch.Tensor, group: int, scale: bool) -> torch.Tensor:
    """reward − its group's mean (÷ the group's std when `scale`); groups are consecutive runs of `group`."""
    r = rewards.view(-1, group)
    adv = r - r.mean(1, keepdim=True)
    if scale:
        adv = adv / (r.std(1, keepdim=True) + 1e-4)
    return adv.view(-1)


class RLStage(ChatSamples):
    name = "rl"
    on_policy = True  # batches sample from the model being trained: built in step order, never ahead

    def __init__(self, cfg: RLConfig, rt: Runtime):
        self.cfg, self.rt = cfg, rt
        self.model, self.tokenizer = load_model(cfg.model, merge_adapters=True)
        self.problems = load_problems(cfg.data, cfg.split, cfg.max_examples)
        print(f"rl data: {len(self.problems):,} problems from {cfg.data}")
        self.report = SimpleNamespace(problems=len(self.problems), data=cfg.data, split=cfg.split)
        self._perms: dict[int, list[int]] = {}
        inject(self.model, cfg.lora)
        print(trainable_summary(self.model))
        # answers are sampled from a merged copy of the policy, refreshed before each batch (lora.py); the
        # engine keeps it in eval mode: no dropout while sampling
        self.sampler = merged_copy(self.model)
        self.engine = Engine(self.sampler, self.tokenizer, rt,
                             batch_size=cfg.train.batch_size * cfg.group_size)
        room = self.model.config.block_size - cfg.max_new_tokens
        if room < 16:
            raise ValueError(f"max_new_tokens {cfg.max_new_tokens} leaves no room for a question in the "
                             f"{self.model.config.block_size}-token context")
        self.anchor = self._anchor_batches(cfg, rt)  # checked after the problems: inputs in order
        self.prompts = [encode_chat([{"role": "user", "content": f"Q: {p['question']}\nA:"}], self.tokenizer,
                                    add_generation_prompt=True).ids[-room:] for p in self.problems]
        self.sample_prompts = self.prompts[:3]

    def _anchor_batches(self, cfg: RLConfig, rt: Runtime) -> ExampleBatches | None:
        """The anchor's conversations (module docstring) in their own order, a function of (step, micro,
        rank) like every batch; None when anchor_beta is 0."""
        if cfg.anchor_beta <= 0:
            return None
        if not cfg.anchor_data:
            raise ValueError(f"rl: anchor_beta {cfg.anchor_beta} needs anchor_data, chat conversations to "
                             "keep (e.g. the SFT data): --anchor-data FILE, or --set anchor_beta=0")
        convs, rep = load_chat(cfg.anchor_data, self.tokenizer, self.model.config.block_size,
                               cfg.anchor_split)
        # The anchor keeps what RL is not rewarded for. A conversation whose reply the reward can read (a
        # word problem's "The answer is N") is RL's own task: anchoring it pulled against the reward (the
        # world's SFT data is 19% word problems; with them anchored, RL's GSM8K gain halved).
        keep = [c for c in convs if not self.rewardable(self.tokenizer.decode(
            [t for t, lab in zip(c.ids[1:], c.labels[1:]) if lab != IGNORE]))]
        if not keep:
            raise DataError(f"{cfg.anchor_data}: no conversation left to anchor (every reply is one the "
                            "reward scores)")
        print(f"rl anchor: {rep}; {len(convs) - len(keep):,} left to RL (their replies are rewarded), "
              f"{len(keep):,} anchored, {cfg.anchor_batch} per micro-batch, beta {cfg.anchor_beta}")
        return ExampleBatches(keep, replace(cfg.train, batch_size=cfg.anchor_batch), rt)

    def _questions(self, step: int, micro: int) -> list[int]:
        tc = self.cfg.train
        start = ((step * tc.grad_accum + micro) * self.rt.world_size + self.rt.rank) * tc.batch_size
        n = len(self.problems)
        order: list[int] = []
        for k in range(start, start + tc.batch_size):  # a fresh shuffle per epoch, a pure function of k
            epoch = k // n
            if epoch not in self._perms:
                perm = list(range(n))
                random.Random(f"{tc.seed}:{epoch}").shuffle(perm)
                self._perms = {epoch: perm}
            order.append(self._perms[epoch][k % n])
        return order

    @torch.no_grad()
    def batch(self, step: int, micro: int):
        """Sample G answers per question with the current policy; CPU tensors (the answers' inputs, targets,
        advantages), the batch's statistics, and the questions (and anchor conversations) as a model.Prefix.
        The sampler's seed is a function of (seed, step, micro, rank), so a resumed run draws the same
        answers."""
        cfg, G = self.cfg, self.cfg.group_size
        qs = self._questions(step, micro)
        prompts = [self.prompts[q] for q in qs for _ in range(G)]
        seed = random.Random(f"{cfg.train.seed}:{step}:{micro}:{self.rt.rank}").getrandbits(62)
        refresh_merged(self.sampler, self.model)
        with self.rt.autocast():
            outs = self.engine.generate(prompts, cfg.max_new_tokens, temperature=cfg.temperature, stop=STOP,
                                        seed=seed)
        texts = [self.tokenizer.decode(o) for o in outs]
        problems = [self.problems[q] for q in qs for _ in range(G)]
        rewards = self.reward(problems, texts, outs)
        adv = group_advantages(rewards, G, cfg.scale_rewards)
        # the sampled answer (+ EOT when it ended on its own: the model learns to stop) is the target span;
        # the question is computed once for its G answers (model.Prefix)
        answers, width = [], 0
        for r, (p, o) in enumerate(zip(prompts, outs)):
            ans = o + ([self.tokenizer.eot_id] if len(o) < cfg.max_new_tokens else [])
            ans = ans[: self.model.config.block_size + 1 - len(p)] or [self.tokenizer.eot_id]
            answers.append((r // G, ans))
            width = max(width, len(p) + len(ans) - 1)  # the widest prompt + answer, as one row
        x, y, prefix = collate_shared([self.prompts[q] for q in qs], answers, self.tokenizer.eot_id)
        spans = [len(a) for _, a in answers]
        if self.anchor is not None:  # anchor conversations: prefix rows no answer continues (their own)
            # cut to the widest prompt + answer: a longer conversation would cost more than the 64 answers
            # (a reply's first tokens, which it keeps, are where behaviour is chosen)
            convs = self.anchor(step, micro)
            ax, ay = collate(convs, self.tokenizer.eot_id)
            ax, ay = ax[:, :width], ay[:, :width]
            real = torch.tensor([len(c.ids) - 1 for c in convs])[:, None] > torch.arange(ax.size(1))
            prefix = prefix.with_rows(ax, real.long(), ay != IGNORE, self.tokenizer.eot_id)
        correct = rewards.view(-1, G)
        stats = torch.tensor([rewards.mean().item(), correct.max(1).values.mean().item(),
                              sum(spans) / len(spans)])
        return x, y, adv, stats, prefix

    @staticmethod
    def rewardable(reply: str) -> bool:
        """Whether the reward would read an answer from `reply` (a subclass checking another task says so
        for its own)."""
        return extract_strict(reply) != INVALID

    def reward(self, problems: list[dict], texts: list[str], outs: list[list[int]]) -> torch.Tensor:
        """The verifiable reward: the GSM8K suite's verdict on each answer (a subclass may check another
        task)."""
        return rewards_for(problems, texts)

    def loss(self, model, batch):
        x, y, adv, stats, prefix = batch
        mask = y != IGNORE  # the answer tokens: the only logits the loss reads
        n_rl = int(mask.sum())  # selected positions come answers' first, then the anchor's (prefix.select)
        target = y[mask]
        logits, _ = model(x, select=mask, prefix=prefix)
        logps = torch.log_softmax(logits.float(), -1)
        logp = logps[:n_rl].gather(-1, target[:, None]).squeeze(-1)  # (N,)
        n = max(n_rl, 1)
        pg = -(adv.to(logp.dtype)[:, None].expand_as(mask)[mask] * logp).sum() / n
        metrics = {"reward": stats[0], "pass@1": stats[0], f"pass@{self.cfg.group_size}": stats[1],
                   "answer_tokens": stats[2], "pg_loss": pg.detach()}
        # KL to the starting model (the same weights with the adapter off) is logged even when it is not
        # penalised (kl_beta 0): how far RL drifted is the first thing to look at when a reward rises. One
        # no-grad forward over the batch; sampling the answers costs tens of times more.
        with torch.no_grad(), adapters_disabled(self.model):
            ref_logits, _ = self.model(x, select=mask, prefix=prefix)
        ref_logps = torch.log_softmax(ref_logits.float(), -1)
        d = ref_logps[:n_rl].gather(-1, target[:, None]).squeeze(-1) - logp
        kl = (d.exp() - d - 1).sum() / n  # k3: unbiased, always ≥ 0 (Schulman's estimator)
        metrics["kl"] = kl.detach()
        loss = pg + self.cfg.kl_beta * kl if self.cfg.kl_beta else pg
        if logps.size(0) > n_rl:  # anchor reply tokens (none when no anchor, or all were cut)
            # exact KL(π_start ‖ π) per anchor reply token, summed over the vocabulary (not a sampled
            # estimate: both distributions are at hand), averaged over the tokens
            ref_a = ref_logps[n_rl:]
            anchor_kl = (ref_a.exp() * (ref_a - logps[n_rl:])).sum(-1).mean()
            metrics["anchor_kl"] = anchor_kl.detach()
            loss = loss + self.cfg.anchor_beta * anchor_kl
        return loss, metrics

    def units(self, batch) -> int:
        # token-level: every answer token of the step weighs the same (anchor rows are not answers)
        return int((batch[1] != IGNORE).sum())

    tokens = units

    def evaluate(self, model) -> dict[str, float]:
        return {}

    def finish(self, model, run_dir: Path) -> None:
        finish_adapter_run(self, model, run_dir, self.cfg.model)


def run_rl(cfg: RLConfig, out: str | Path, resume: bool = False) -> dict:
    return launch("rl", cfg, out, resume, lambda cfg, rt, _: RLStage(cfg, rt),
                  ("model", "the model or adapter folder to start from (e.g. runs/dpo)"))
