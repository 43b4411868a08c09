import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fp32 import assert_adam_weights_close, assert_fp32_close, fp32_atol
from llmrecipe.checkpoint import load_model
from llmrecipe.model import GPTConfig
from llmrecipe.train import stage_config
from llmrecipe.train.loop import TrainConfig, lr_at
from llmrecipe.train.pretrain import PretrainConfig, run_pretrain


def small_cfg(corpus, **train) -> PretrainConfig:
    base = dict(batch_size=8, grad_accum=1, max_steps=10, lr=3e-3, min_lr=3e-4, warmup_steps=5,
                log_interval=1, eval_interval=0, save_interval=1000, seed=0)
    return PretrainConfig(model=GPTConfig(n_layer=2, n_head=2, n_embd=64, vocab_size=512, block_size=64),
                          train=TrainConfig(**{**base, **train}), data=str(corpus))


def losses(run_dir) -> list[float]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


def simulate_kill(finished, dest, last_checkpoint: int, logged: int, final: int):
    """A copy of a finished run folder as if killed after step `logged`: its checkpoints after
    `last_checkpoint` and its final model gone, `latest` naming the last kept checkpoint."""
    shutil.copytree(finished, dest)
    shutil.rmtree(dest / "checkpoints" / f"step_{final:07d}")
    (dest / "checkpoints" / "latest").write_text(f"step_{last_checkpoint:07d}\n")
    (dest / "model.safetensors").unlink(missing_ok=True)  # an adapter run has none
    lines = (dest / "metrics.jsonl").read_text().splitlines()[:logged]
    (dest / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return dest


def test_loss_falls_well_below_uniform(small_corpus, tmp_path):
    cfg = small_cfg(small_corpus, max_steps=300, batch_size=16, lr=1e-2, min_lr=1e-3, eval_interval=300,
                    log_interval=1)
    last = run_pretrain(cfg, tmp_path)
    assert losses(tmp_path)[0] == pytest.approx(math.log(512), abs=0.1)  # uniform at init
    assert last["loss"] < math.log(512) - 1.2, losses(tmp_path)[::20]
    assert last["val_loss"] < math.log(512) - 1.0
    model, tok = load_model(tmp_path)  # the final model folder reloads with its tokenizer
    assert model.config.vocab_size == 512 and tok.vocab_size == 512


def _first_step_gradients(cfg: PretrainConfig) -> tuple[dict[str, torch.Tensor], float]:
    """The loop's own accumulated gradient of step 0 (captured where the optimizer would use it)."""
    from llmrecipe.runtime import setup
    from llmrecipe.train.loop import StepBatches, _step
    from llmrecipe.train.pretrain import PretrainStage

    torch.manual_seed(cfg.train.seed)
    stage = PretrainStage(cfg, setup("cpu", "float32"))
    grads = {}

    class Capture:  # stands in for the optimizer: records the gradients instead of stepping
        def step(self):
            grads.update({n: p.grad.clone() for n, p in stage.model.named_parameters()})

        def zero_grad(self, set_to_none=True):
            stage.model.zero_grad(set_to_none=set_to_none)

    cfg.train.grad_clip = 0.0
    loader = StepBatches(stage, cfg.train.grad_accum, stage.rt.device, 1)
    batches, units, _ = loader.get(0)
    metrics = _step(stage, stage.model, stage.model, Capture(), batches, units, cfg.train, stage.rt)
    loader.close()
    return grads, float(metrics["loss"])


def test_gradient_accumulation_matches_one_big_batch(small_corpus, tmp_path):
    one = small_cfg(small_corpus, batch_size=8, grad_accum=1)
    four = small_cfg(small_corpus, batch_size=2, grad_accum=4)
    (ga, la), (gb, lb) = _first_step_gradients(one), _first_step_gradients(four)
    n = 8 * one.model.block_size  # every gradient is a sum over the batch's B x T token losses
    assert la == pytest.approx(lb, abs=fp32_atol(la, n))
    for k in ga:
        assert_fp32_close(gb[k], ga[k], n, k)
    # and the real loop end to end: the same losses, the same weights up to Adam's amplification of rounding
    for name, batch, accum in (("a", 8, 1), ("b", 2, 4)):
        run_pretrain(small_cfg(small_corpus, batch_size=batch, grad_accum=accum, max_steps=3, warmup_steps=0),
                     tmp_path / name)
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert la == pytest.approx(lb, abs=fp32_atol(max(la), n))
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert_adam_weights_close(a, b, lr=3e-3, steps=3, reduction=n)


def test_exact_resume(small_corpus, tmp_path):
    cfg = small_cfg(small_corpus, max_steps=8, save_interval=4, keep_checkpoints=5)
    cfg.model.dropout = 0.1  # RNG state must be restored too
    straight = tmp_path / "straight"
    run_pretrain(cfg, straight)
    # simulate a run killed after step 6: its last checkpoint is step 4, metrics run ahead to step 6
    killed = simulate_kill(straight, tmp_path / "killed", last_checkpoint=4, logged=6, final=8)
    with pytest.raises(FileExistsError, match="--resume"):
        run_pretrain(cfg, killed)
    run_pretrain(cfg, killed, resume=True)
    assert losses(killed) == losses(straight) and len(losses(killed)) == 8
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_schedule_warmup_then_cosine_to_min_lr():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(110, cfg) == pytest.approx(0.1)


def test_wsd_schedule_warmup_stable_then_linear_decay():
    cfg = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=10, max_steps=110, schedule="wsd", decay_frac=0.2)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    # stable until step 88 (the last 22 of 110 steps decay), halfway down at 99, min_lr at the end
    assert lr_at(10, cfg) == lr_at(87, cfg) == lr_at(88, cfg) == 1.0
    assert lr_at(99, cfg) == pytest.approx(0.5) and lr_at(110, cfg) == pytest.approx(0.0)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 110))
    with pytest.raises(ValueError, match="schedule"):
        from llmrecipe.config import apply_overrides
        apply_overrides(stage_config("pretrain", "tiny"), {"schedule": "linear"})


def test_presets_resolve():
    big = stage_config("pretrain", "gpt2-124m")
    m, t = big.model, big.train
    assert (m.n_layer, m.n_embd, t.batch_size, t.grad_accum) == (12, 768, 16, 32)
    assert (t.lr, t.min_lr, t.warmup_steps, t.max_steps) == (6e-4, 6e-5, 2000, 100000)
    from llmrecipe.config import apply_overrides
    tiny = apply_overrides(stage_config("pretrain", "tiny"),
                           {"max_steps": "300", "n_layer": "2", "model.dropout": "0.1"})
    assert (tiny.train.max_steps, tiny.model.n_layer, tiny.model.dropout) == (300, 2, 0.1)
    with pytest.raises(ValueError, match="unknown config key 'n_layers'"):
        apply_overrides(tiny, {"n_layers": "2"})
    with pytest.raises(ValueError, match="cannot read 'abc' as int"):
        apply_overrides(tiny, {"max_steps": "abc"})


def _count_host_reads(monkeypatch) -> list[str]:
    """Every tensor → Python read (.item(), .tolist(), float(), int(), bool()) made from llmrecipe's code: on
    CUDA each one waits for the GPU's queue to drain."""
    import sys

    import llmrecipe

    # our code is the files under the package's own folder: a substring of the path ("llmrecipe") would
    # also count torch's files in a checkout named llmrecipe (its .venv lies inside it)
    package = str(Path(llmrecipe.__file__).resolve().parent) + os.sep
    seen = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, _name=name, **k):
            caller = str(Path(sys._getframe(1).f_code.co_filename).resolve())
            if caller.startswith(package):
                seen.append(f"{_name} at {caller}:{sys._getframe(1).f_lineno}")
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return seen


def test_no_host_device_sync_between_logging_steps(small_corpus, tmp_path, monkeypatch):
    seen = _count_host_reads(monkeypatch)
    counts = []
    for steps in (2, 6):  # one log line (the last step) in both runs; 4 x more micro-steps in the second
        seen.clear()
        run_pretrain(small_cfg(small_corpus, batch_size=2, grad_accum=4, max_steps=steps, log_interval=100),
                     tmp_path / str(steps))
        counts.append(list(seen))
    assert len(counts[0]) == len(counts[1]), counts[1]


def test_next_step_is_built_while_this_one_computes(small_corpus, tmp_path):
    """The loader thread builds step s+1's batches before step s's loss returns."""
    import threading

    from llmrecipe.runtime import setup
    from llmrecipe.train.loop import train
    from llmrecipe.train.pretrain import PretrainStage

    cfg = small_cfg(small_corpus, max_steps=4)
    torch.manual_seed(cfg.train.seed)  # as run_pretrain does
    stage = PretrainStage(cfg, setup("cpu", "float32"))
    started = {s: threading.Event() for s in range(cfg.train.max_steps + 1)}
    built_early, threads = [], set()
    batch, loss = stage.batch, stage.loss
    step_of = {}

    def recording_batch(step, micro):
        threads.add(threading.current_thread().name)
        started[step].set()
        out = batch(step, micro)
        step_of[id(out[0])] = step
        return out

    def waiting_loss(model, b):
        s = len(built_early)
        if s + 1 < cfg.train.max_steps:
            built_early.append(started[s + 1].wait(timeout=10))
        else:
            built_early.append(True)
        return loss(model, b)

    stage.batch, stage.loss = recording_batch, waiting_loss
    train(stage, cfg.train, stage.rt, tmp_path, {})
    assert built_early == [True] * cfg.train.max_steps
    assert threads and threading.main_thread().name not in threads
    # and the run is the run it always was: the same losses as a plain one
    run_pretrain(small_cfg(small_corpus, max_steps=4), tmp_path / "plain")
    assert losses(tmp_path) == losses(tmp_path / "plain")


def test_compiled_training_matches_eager(small_corpus, tmp_path):
    """`compile: true` (what `auto` picks for pre-training on CUDA) trains the same model as eager mode, up to
    the reordering of fp32 sums that fused kernels bring."""
    for mode in ("false", "true"):
        run_pretrain(small_cfg(small_corpus, max_steps=3, warmup_steps=0, compile=mode), tmp_path / mode)
    le, lc = losses(tmp_path / "false"), losses(tmp_path / "true")
    n = 8 * 64  # the loss is a mean over B x T tokens
    assert lc == pytest.approx(le, abs=fp32_atol(max(le), n))
    a, b = (load_file(tmp_path / m / "model.safetensors") for m in ("false", "true"))
    assert_adam_weights_close(a, b, lr=3e-3, steps=3, reduction=n)


def test_compile_auto_is_on_only_for_cuda_pretraining():
    from llmrecipe.runtime import Runtime
    from llmrecipe.train.loop import use_compile

    class S:
        def __init__(self, name):
            self.name = name
    cuda, cpu = Runtime(torch.device("cuda", 0), torch.bfloat16), Runtime(torch.device("cpu"), None)
    auto = TrainConfig()
    assert auto.compile == "auto"
    assert use_compile(auto, S("pretrain"), cuda) and not use_compile(auto, S("pretrain"), cpu)
    assert not use_compile(auto, S("sft"), cuda) and not use_compile(auto, S("dpo"), cuda)
    assert use_compile(TrainConfig(compile="true"), S("sft"), cpu)
    with pytest.raises(ValueError, match="compile must be auto, true or false"):
        use_compile(TrainConfig(compile="yes please"), S("sft"), cpu)


def test_real_preset_divides_over_eight_gpus():
    """README's `torchrun --nproc_per_node 8` commands: every stage's grad_accum splits over 8 ranks."""
    for cfg in (stage_config(s, "gpt2-124m") for s in ("pretrain", "sft", "dpo")):
        assert cfg.train.grad_accum % 8 == 0, cfg


def test_mfu_names_the_right_peak(monkeypatch):
    from llmrecipe.runtime import peak_flops_for

    monkeypatch.delenv("LLMRECIPE_PEAK_TFLOPS", raising=False)
    assert peak_flops_for("NVIDIA H100 80GB HBM3") == 989e12  # SXM
    assert peak_flops_for("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for("NVIDIA H100 NVL") == 835e12
    assert peak_flops_for("NVIDIA A100-SXM4-40GB") == peak_flops_for("NVIDIA A100 80GB PCIe") == 312e12
    assert peak_flops_for("NVIDIA L4") == 121e12 and peak_flops_for("NVIDIA L40S") == 362e12
    assert peak_flops_for("NVIDIA A10G") is None and peak_flops_for("Some New GPU") is None
    monkeypatch.setenv("LLMRECIPE_PEAK_TFLOPS", "100")
    assert peak_flops_for("NVIDIA A10G") == 100e12


def test_fsdp_computes_in_bf16_and_reduces_in_fp32():
    from llmrecipe.runtime import Runtime

    mp = Runtime(torch.device("cuda", 0), torch.bfloat16).fsdp_policy()
    assert (mp.param_dtype, mp.reduce_dtype) == (torch.bfloat16, torch.float32)
    plain = Runtime(torch.device("cpu"), None).fsdp_policy()
    assert plain.param_dtype is None and plain.reduce_dtype is None


def test_throughput_excludes_evaluation_time(small_corpus, tmp_path, monkeypatch):
    """tokens/s is the training rate: an evaluation inside the logging window does not lower it. The
    evaluation advances the loop's clock by 1,000 s (no sleeping: a loaded CI machine must not matter)."""
    import time
    import types

    from llmrecipe.train import loop
    from llmrecipe.train.pretrain import PretrainStage

    offset = [0.0]
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(time=lambda: time.time() + offset[0]))
    slow = PretrainStage.evaluate

    def evaluate(self, model):
        offset[0] += 1000.0
        return slow(self, model)
    monkeypatch.setattr(PretrainStage, "evaluate", evaluate)
    run_pretrain(small_cfg(small_corpus, max_steps=4, log_interval=4, eval_interval=2), tmp_path)
    rec = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in x][-1]
    # 4 steps x 512 tokens: with the evaluation counted the rate would be ~2 tokens/s
    assert rec["tokens_per_sec"] > 50, rec
    assert rec["elapsed"] > 1000  # wall time itself still counts the evaluation
