"""Stage 5, RL with verifiable rewards: the reward is the GSM8K suite's verdict, group advantages, that the
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

    main(["rl", "--model", str(tiny_base), "--data-dir", str(data_dir / "eval"),
          "--out", str(tmp_path / "rl"), "--preset", "tiny", "--set", "max_steps=1", "batch_size=2",
          "group_size=2", "max_new_tokens=4"])
    out = capsys.readouterr().out
    assert "rl: preset tiny" in out and "group 2, temperature 0.7" in out
    assert (tmp_path / "rl" / "adapter_config.json").is_file()
    with pytest.raises(SystemExit, match="rl needs --model"):
        main(["rl", "--out", str(tmp_path / "x")])
    shutil.rmtree(tmp_path / "rl")
