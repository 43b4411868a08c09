"""RL with verifiable rewards: the reward is the GSM8K suite's verdict, group advantages, that the
update raises the probability of rewarded answers on a toy task, exact resume, and the CLI."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from llmrecipe.eval.gsm8k import GSM8K, load_items
from llmrecipe.lora import LoRAConfig
from llmrecipe.train.loop import TrainConfig
from llmrecipe.train.rl import RLConfig, RLStage, group_advantages, rewards_for, run_rl
from test_train import simulate_kill


def test_reward_is_exactly_the_gsm8k_suites_verdict(data_dir):
    items = load_items(str(data_dir / "eval"))[:40]
    outputs = []
    for i, it in enumerate(items):  # right, wrong, formatted differently, no final answer at all
        outputs.append([f"So the total is {it['gold']}. The answer is {it['gold']}.",
                        f"The answer is {it['gold']}1.", f"The answer is ${it['gold']}.",
                        "I am not sure."][i % 4])
    got = rewards_for(items, outputs)
    want = torch.tensor([float(GSM8K.record(it, o)["correct"]) for it, o in zip(items, outputs)])
    assert torch.equal(got, want) and 0 < got.sum() < len(items)


def test_group_advantages():
    r = torch.tensor([1., 1., 1., 1., 0., 0., 0., 0., 1., 0., 0., 0.])
    adv = group_advantages(r, 4, scale=False)
    assert torch.equal(adv[:8], torch.zeros(8))  # all right / all wrong: nothing to learn from the group
    assert torch.allclose(adv[8:], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    scaled = group_advantages(r, 4, scale=True)
    assert torch.equal(scaled[:8], torch.zeros(8)) and scaled[8] > 1.4  # ÷ std 0.5


def _problems(tmp_path, n=32):
    f = tmp_path / "train.jsonl"
    rows = [{"question": f"Ann has {i} apples and finds 2 more. How many now?",
             "answer": f"{i} + 2 = {i + 2}.\n#### {i + 2}"} for i in range(n)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(f)


def _cfg(model, data, **train) -> RLConfig:
    t = dict(batch_size=2, grad_accum=2, max_steps=4, lr=1e-2, min_lr=1e-2, warmup_steps=0,
             schedule="constant", weight_decay=0.0, log_interval=1, eval_interval=0, save_interval=2,
             keep_checkpoints=5, device="cpu", dtype="float32")
    return RLConfig(lora=LoRAConfig(r=4, alpha=8, dropout=0.0), train=TrainConfig(**{**t, **train}),
                    model=str(model), data=data, group_size=4, max_new_tokens=8)


class TargetFirstToken(RLStage):
    """A toy task with a known reward: 1 when the answer's first token is one of `targets`."""

    targets: set[int] = set()

    def reward(self, problems, texts, outs):
        return torch.tensor([float(bool(o) and o[0] in self.targets) for o in outs])


def _first_token_probs(stage) -> torch.Tensor:
    """The policy's exact first-answer-token distribution, averaged over 8 training prompts."""
    model = stage.model.eval()
    with torch.no_grad():
        ps = [torch.softmax(model(torch.tensor([ids]))[0][0, -1], -1) for ids in stage.prompts[:8]]
    model.train()
    return torch.stack(ps).mean(0)


def test_update_raises_the_probability_of_rewarded_answers(tiny_base, tmp_path):
    from llmrecipe.runtime import setup
    from llmrecipe.train.loop import train

    cfg = _cfg(tiny_base, _problems(tmp_path), max_steps=20, grad_accum=1, batch_size=4, lr=2e-2, min_lr=2e-2)
    cfg.group_size, cfg.max_new_tokens = 8, 1
    torch.manual_seed(0)
    stage = TargetFirstToken(cfg, setup("cpu", "float32"))
    p0 = _first_token_probs(stage)
    ranked = p0.argsort(descending=True).tolist()
    stage.targets = set(ranked[1:6])  # the runners-up 2-6: plausible answers, not the preferred one
    before = float(p0[list(stage.targets)].sum())
    train(stage, cfg.train, stage.rt, tmp_path / "run", {})
    after = float(_first_token_probs(stage)[list(stage.targets)].sum())
    # measured on AMD EPYC: 0.16 → 0.24 (x1.5) in 20 steps at lr 1e-2…5e-2; a null update stays at x1.0
    assert after > 1.3 * before, (before, after)
    # (the per-step batch reward is logged too, but 32 samples a step are too few to compare its first and
    # last steps robustly on another CPU's sampling trajectory: the exact probability above is the check)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 20 and all(0 <= r["reward"] <= 1 for r in recs)
    # KL to the starting model is logged although not penalised: exactly 0 at step 1 (a fresh LoRA's B is
    # zero, so the policy that sampled IS the reference), then > 0 as the update moves the policy
    assert recs[0]["kl"] == 0.0 and recs[-1]["kl"] > 0, [r["kl"] for r in recs]


def test_killed_rl_stage_resumes_to_the_same_weights(tiny_base, tmp_path):
    data = _problems(tmp_path)
    straight = tmp_path / "straight"
    run_rl(_cfg(tiny_base, data), straight)
    killed = tmp_path / "killed"
    simulate_kill(straight, killed, last_checkpoint=2, logged=3, final=4)
    (killed / "adapter_model.safetensors").unlink()
    run_rl(_cfg(tiny_base, data), killed, resume=True)
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(killed / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    recs = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and all("pass@4" in r for r in recs)


def test_rl_cli_on_local_gsm8k_train_file(tiny_base, data_dir, tmp_path, capsys):
    from llmrecipe.cli import main

    args = ["rl", "--model", str(tiny_base), "--data-dir", str(data_dir / "eval"), "--out",
            str(tmp_path / "rl"), "--preset", "tiny", "--set", "max_steps=1", "batch_size=2", "group_size=2",
            "max_new_tokens=4"]
    with pytest.raises(SystemExit, match="anchor_beta 1.0 needs anchor_data"):  # the preset anchors RL
        main(args)
    main(args[:1] + ["--anchor-data", str(data_dir / "sft" / "ultrachat_200k_sample20.jsonl")] + args[1:])
    out = capsys.readouterr().out
    assert "rl: preset tiny" in out and "group 2, temperature 0.7" in out and "rl anchor: 20 rows" in out
    assert (tmp_path / "rl" / "adapter_config.json").is_file()
    with pytest.raises(SystemExit, match="rl needs --model"):
        main(["rl", "--out", str(tmp_path / "x")])
    shutil.rmtree(tmp_path / "rl")



def _conversations(tmp_path, n=12) -> str:
    """Short chats in ultrachat's schema: replies that fit beside the toy answers (anchor rows are cut to
    the answers' width, and ultrachat's real prompts alone are longer than that)."""
    f = tmp_path / "chats.jsonl"
    rows = [{"prompt": f"Name a colour, {i}.", "prompt_id": str(i), "messages": [
        {"role": "user", "content": f"Name a colour, {i}."},
        {"role": "assistant", "content": ["Red.", "The sky is blue.", "Green, like grass.",
                                           f"{i} + 2 = {i + 2}. The answer is {i + 2}."][i % 4]}]}
        for i in range(n)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(f)


def _anchored(tiny_base, tmp_path, data_dir, beta, cls=RLStage, **train):
    from llmrecipe.runtime import setup

    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = _cfg(tiny_base, _problems(tmp_path), **train)
    cfg.anchor_beta, cfg.anchor_batch = beta, 3
    cfg.anchor_data = _conversations(tmp_path)
    torch.manual_seed(0)
    return cls(cfg, setup("cpu", "float32"))


def _reply_kl(stage, x, y) -> torch.Tensor:
    """KL(start ‖ policy) per reply token of (x, y), from two plain full forwards (the reference)."""
    from llmrecipe.lora import adapters_disabled

    with torch.no_grad():
        logits = stage.model(x)[0][y != -100]
        with adapters_disabled(stage.model):
            ref = stage.model(x)[0][y != -100]
    return torch.nn.functional.kl_div(logits.log_softmax(-1), ref.log_softmax(-1), log_target=True,
                                      reduction="none").sum(-1)


def test_anchor_rows_ride_with_the_answers_and_their_loss_is_the_exact_kl(tiny_base, tmp_path, data_dir):
    plain = _anchored(tiny_base, tmp_path, data_dir, 0.0)
    stage = _anchored(tiny_base, tmp_path, data_dir, 0.5)
    b0, b = plain.batch(0, 0), stage.batch(0, 0)
    (x0, y0, adv0, _, p0), (x, y, adv, _, prefix) = b0, b
    Q = p0.idx.size(0)
    # the same sampled answers (the sampler's seed is the step's), each continuing its question; then 3
    # teacher-forced conversations as prefix rows that no answer continues, read through `select`
    assert torch.equal(adv, adv0) and torch.equal(x, x0) and torch.equal(y, y0)
    assert prefix.idx.size(0) == Q + 3 and torch.equal(prefix.owner, p0.owner)
    assert not prefix.select[:Q].any() and prefix.select[Q:].any(1).all()
    assert stage.units(b) == plain.units(b0)  # anchor tokens are not answer tokens
    # a reply the reward scores ("The answer is N") is RL's own task, never anchored: 3 of the 12 chats
    assert len(stage.anchor.examples) == 9
    # a fresh LoRA's B is zero: the policy IS the starting model, so the anchor costs exactly nothing
    loss, m = stage.loss(stage.model, b)
    assert m["anchor_kl"] == 0.0 and m["kl"] == 0.0
    with torch.no_grad():  # move the policy: the anchor now measures how far, token by token
        for name, p in stage.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    loss, m = stage.loss(stage.model, b)
    want = _reply_kl(stage, prefix.idx[Q:], torch.where(prefix.select[Q:], 0, -100))
    # fp32: a log-softmax over V = 512 and a sum of V terms; relative error a few hundred ulps at most
    assert want.mean() > 1e-3 and abs(float(m["anchor_kl"]) - float(want.mean())) < 1e-4 * float(want.mean())
    # the answers' policy-gradient loss is that of each question + answer as one plain row
    from llmrecipe.data.chat import collate, expand_shared
    xs, ys = collate(expand_shared(x, y, prefix), stage.tokenizer.eot_id)
    with torch.no_grad():
        logp = stage.model(xs)[0].log_softmax(-1)[ys != -100].gather(-1, ys[ys != -100][:, None])[:, 0]
    pg = -(adv[:, None].expand_as(ys)[ys != -100] * logp).sum() / int((ys != -100).sum())
    assert abs(float(m["pg_loss"]) - float(pg)) <= 1e-4 * float(logp.abs().mean()) + 1e-6
    # and the RL part is the plain stage's loss on the same answers
    plain_loss, pm = plain.loss(stage.model, b0)
    assert torch.allclose(loss - 0.5 * m["anchor_kl"], plain_loss, rtol=1e-4, atol=1e-6)
    assert abs(float(m["kl"]) - float(pm["kl"])) <= 1e-4 * float(pm["kl"]) + 1e-7


def test_anchor_keeps_the_policy_near_the_start_on_conversations(tiny_base, tmp_path, data_dir):
    """RL on the toy task moves the conversations' replies too (the LoRA is shared); the anchor holds them."""
    from llmrecipe.data.chat import collate, load_chat
    from llmrecipe.train.loop import train

    drift = {}
    for beta in (0.0, 2.0):
        stage = _anchored(tiny_base, tmp_path / f"b{beta}", data_dir, beta, cls=TargetFirstToken,
                          max_steps=12, grad_accum=1, batch_size=4, lr=2e-2, min_lr=2e-2)
        stage.cfg.group_size, stage.cfg.max_new_tokens = 8, 1
        stage.targets = set(_first_token_probs(stage).argsort(descending=True)[1:6].tolist())
        train(stage, stage.cfg.train, stage.rt, tmp_path / f"run{beta}", {})
        convs, _ = load_chat(_conversations(tmp_path), stage.tokenizer, stage.model.config.block_size)
        drift[beta] = float(_reply_kl(stage, *collate(convs, stage.tokenizer.eot_id)).mean())
    # measured on AMD EPYC: mean KL per reply token 0.147 without the anchor, 0.017 with it (8.5x less);
    # the test asks for half, a margin no CPU's rounding of 12 steps can cross
    assert drift[2.0] < 0.5 * drift[0.0], drift
