"""Issue 17: live tracking. What goes to metrics.jsonl goes to TensorBoard under the same names and steps,
also across a kill and --resume (no duplicated or stale steps), and pre-training logs samples."""
from __future__ import annotations

import json

import pytest

from test_train import simulate_kill, small_cfg

pytest.importorskip("tensorboard")


def tb_scalars(run_dir) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    out = {}
    for tag in ea.Tags()["scalars"]:
        events = ea.Scalars(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), (tag, steps)  # each step once, even after a resume
        out[tag] = {e.step: e.value for e in events}
    return out


def jsonl_scalars(run_dir) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)):
                out.setdefault(k, {})[r["step"]] = float(v)
    return out


def assert_same(tb: dict, js: dict) -> None:
    assert set(tb) == set(js), (sorted(tb), sorted(js))
    for tag in js:
        assert tb[tag].keys() == js[tag].keys(), tag
        for step, v in js[tag].items():  # TensorBoard stores float32: equal to its precision
            assert tb[tag][step] == pytest.approx(v, rel=1e-6, abs=1e-30), (tag, step)


def test_tensorboard_equals_metrics_jsonl_across_a_kill_and_resume(small_corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llmrecipe.train.pretrain import run_pretrain

    cfg = small_cfg(small_corpus, max_steps=8, save_interval=4, eval_interval=4, keep_checkpoints=5,
                    log="tensorboard")
    straight = tmp_path / "straight"
    run_pretrain(cfg, straight)
    assert_same(tb_scalars(straight), jsonl_scalars(straight))
    logged = set(tb_scalars(straight))
    assert {"loss", "lr", "grad_norm", "tokens_per_sec", "tokens", "elapsed", "val_loss"} <= logged
    ea = EventAccumulator(str(straight / "tb"))
    ea.Reload()
    assert "samples/text_summary" in ea.Tags()["tensors"]  # the fixed prompts' continuations, each evaluation
    # killed after step 6 with its event files holding steps 1-8: the resume must purge 5-8 and relog them
    killed = simulate_kill(straight, tmp_path / "killed", last_checkpoint=4, logged=6, final=8)
    run_pretrain(cfg, killed, resume=True)
    assert_same(tb_scalars(killed), jsonl_scalars(killed))
    assert sorted(tb_scalars(killed)["loss"]) == list(range(1, 9))


def test_sft_logs_the_same_scalars(tiny_base, data_dir, tmp_path):
    from llmrecipe.lora import LoRAConfig
    from llmrecipe.train.loop import TrainConfig
    from llmrecipe.train.sft import SFTConfig, run_sft

    cfg = SFTConfig(lora=LoRAConfig(r=4, alpha=8, dropout=0.0), base=str(tiny_base),
                    data=str(data_dir / "sft" / "ultrachat_200k_sample20.jsonl"),
                    train=TrainConfig(batch_size=2, grad_accum=1, max_steps=3, lr=1e-3, warmup_steps=0,
                                      schedule="constant", log_interval=1, eval_interval=0, save_interval=100,
                                      log="tensorboard"))
    run_sft(cfg, tmp_path / "sft")
    assert_same(tb_scalars(tmp_path / "sft"), jsonl_scalars(tmp_path / "sft"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "sft" / "tb"))
    ea.Reload()
    assert "samples/text_summary" in ea.Tags()["tensors"]  # replies to the fixed chat prompts, last step


def test_unknown_tracker_is_a_config_error(tmp_path):
    from llmrecipe.cli import main

    with pytest.raises(SystemExit, match="config key 'train.log' = 'tensorbored'"):
        main(["pretrain", "--preset", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
              "--log", "tensorbored"])
