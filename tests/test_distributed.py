"""Real multi-process training on CPU (gloo), launched the way users launch it: torchrun -m llmrecipe."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fp32 import assert_adam_weights_close, fp32_atol
from llmrecipe.cli import main

SMALL = ["n_layer=2", "n_head=2", "n_embd=64", "vocab_size=512", "block_size=64", "batch_size=4",
         "grad_accum=2", "lr=3e-3", "warmup_steps=2", "log_interval=1", "eval_interval=0", "save_interval=3",
         "keep_checkpoints=5"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "llmrecipe"]


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def torchrun(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def losses(d: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


# every gradient is a sum over one step's tokens: grad_accum x batch_size x block_size (SMALL's 2 x 4 x 64)
REDUCTION = 2 * 4 * 64


def weights_close(a: Path, b: Path, name: str = "model.safetensors", lr: float = 3e-3,
                  steps: int = 6) -> None:
    """Equal up to fp32 rounding (in another summation order), as amplified by Adam (see fp32.py)."""
    assert_adam_weights_close(load_file(a / name), load_file(b / name), lr, steps, REDUCTION)


def losses_close(a: list[float], b: list[float], reduction: int = REDUCTION) -> None:
    assert len(a) == len(b) and a == pytest.approx(b, abs=fp32_atol(max(a), reduction))


@pytest.fixture(scope="module")
def one_proc(small_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    main(["pretrain", "--data", str(small_corpus), "--out", str(out), "--set", "max_steps=6", *SMALL])
    return out


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_and_resume_in_one(one_proc, small_corpus, tmp_path, parallel):
    two = tmp_path / "two"
    # torchrun's parser stops at "--log" (ambiguous with its --log-dir): --report-to is the spelling it lets
    # by
    track = ["--report-to", "tensorboard"] if parallel == "ddp" and _has("tensorboard") else []
    torchrun("pretrain", "--data", str(small_corpus), "--out", str(two), "--set", "max_steps=6",
             f"parallel={parallel}", *SMALL, *track)
    losses_close(losses(two), losses(one_proc))
    assert len(losses(two)) == 6
    if track:  # only rank 0 logs: one event file, each step once
        assert len(list((two / "tb").glob("events.out.tfevents.*"))) == 1
        from test_track import tb_scalars
        assert sorted(tb_scalars(two)["loss"]) == list(range(1, 7))
    weights_close(one_proc, two)
    # the step-3 checkpoint written by 2 ranks continues identically in 1 process
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000006")
    (resumed / "checkpoints" / "latest").write_text("step_0000003\n")
    (resumed / "model.safetensors").unlink()
    main(["pretrain", "--data", str(small_corpus), "--out", str(resumed), "--resume", "--set", "max_steps=6",
          *SMALL])
    losses_close(losses(resumed), losses(two))
    weights_close(two, resumed)


FINETUNE_REDUCTION = 2 * 2 * 256  # batch 2 x accumulation 2 x sequences of up to the base's 256 tokens
LOG_QUANTUM = 1e-6  # two values each rounded to 6 decimals (train/loop.py's metrics log) differ by up to this


def test_sft_and_dpo_steps_match_one_process(tiny_base, data_dir, tmp_path):
    common = ["batch_size=2", "grad_accum=2", "max_steps=2", "log_interval=1", "lr=5e-3"]
    sft = ["sft", "--base", str(tiny_base), "--preset", "tiny",
           "--data", str(data_dir / "sft" / "ultrachat_200k_sample20.jsonl")]
    main([*sft, "--out", str(tmp_path / "sft1"), "--set", *common])
    torchrun(*sft, "--out", str(tmp_path / "sft2"), "--set", *common)
    losses_close(losses(tmp_path / "sft2"), losses(tmp_path / "sft1"), FINETUNE_REDUCTION)
    weights_close(tmp_path / "sft1", tmp_path / "sft2", "adapter_model.safetensors", lr=5e-3, steps=2)
    dpo = ["dpo", "--sft", str(tmp_path / "sft1"), "--data",
           str(data_dir / "preference" / "ultrafeedback" / "train_clean.jsonl")]
    main([*dpo, "--out", str(tmp_path / "dpo1"), "--set", *common, "max_examples=16"])
    torchrun(*dpo, "--out", str(tmp_path / "dpo2"), "--set", *common, "max_examples=16")
    m1 = [json.loads(x) for x in (tmp_path / "dpo1" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "dpo2" / "metrics.jsonl").read_text().splitlines()]
    beta = json.loads((tmp_path / "dpo1" / "config.json").read_text())["beta"]
    for a, b in zip(m1, m2):
        # a reward margin is a difference of β·log-probs hundreds of times larger than itself: its fp32 error
        # scales with those terms (policy and reference, chosen and rejected), not with the margin
        terms = 2 * beta * (abs(a["logps/chosen"]) + abs(a["logps/rejected"]))
        for k in ("loss", "rewards/margin", "rewards/accuracy", "logps/chosen"):
            scale = max(abs(a[k]), terms) if k.startswith("rewards/margin") else a[k]
            # + LOG_QUANTUM: metrics.jsonl holds each value rounded to 6 decimals
            assert a[k] == pytest.approx(b[k], abs=fp32_atol(scale, FINETUNE_REDUCTION) + LOG_QUANTUM), k


def test_killing_one_rank_ends_the_other_with_a_clear_message(small_corpus, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "LLMRECIPE_DIST_TIMEOUT": "30"}
        cmd = [sys.executable, "-m", "llmrecipe", "pretrain", "--data", str(small_corpus), "--out",
               str(tmp_path / "run"), "--set", "max_steps=100000", "save_interval=100000", *SMALL[:-2]]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 3):
        assert time.time() < deadline and procs[0].poll() is None, "training did not start"
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.time()
    try:
        _, err = procs[0].communicate(timeout=90)
    finally:
        for p in procs:
            p.kill()
    assert time.time() - t0 < 90 and procs[0].returncode != 0
    assert "rank 0: lost contact with another rank" in err, err[-2000:]


def test_eval_shards_items_over_ranks_with_the_same_records(tiny_base, data_dir, tmp_path):
    args = ["eval", "--model", str(tiny_base), "--suites", "mmlu_pro", "--limit", "9", "--data-dir",
            str(data_dir / "eval")]
    main([*args, "--out", str(tmp_path / "one" / "eval.json")])
    torchrun(*args, "--out", str(tmp_path / "two" / "eval.json"))

    def records(d):
        recs = [json.loads(x) for x in (tmp_path / d / "eval.mmlu_pro.jsonl").read_text().splitlines()]
        return sorted(({k: v for k, v in r.items() if k != "scores"} for r in recs),
                      key=lambda r: str(r["id"]))

    assert records("one") == records("two") and len(records("two")) == 9
    one, two = (json.loads((tmp_path / d / "eval.json").read_text())["suites"]["mmlu_pro"]
                for d in ("one", "two"))
    assert one["accuracy"] == two["accuracy"] and one["per_category"] == two["per_category"]


MUON = ["optimizer=muon", "muon_lr=0.02", "model.position=rope", "model.norm=rmsnorm", "model.qk_norm=true",
        "model.mlp=swiglu", "model.bias=false"]


def test_muon_on_two_ranks_matches_one_process(small_corpus, tmp_path):
    """DDP reduces the gradients before Muon orthogonalises them: 2 ranks update as 1 process, to fp32
    rounding. A Muon step moves an entry by at most muon_lr x 1.25 (Newton-Schulz's largest singular value)
    x sqrt(8) (SwiGLU's fused gate|up is 8 x as tall as wide), under 3 x muon_lr: the bound given for the
    few entries a rounding difference can flip; all others must agree to fp32 rounding (fp32.py)."""
    one, two = tmp_path / "one", tmp_path / "two"
    main(["pretrain", "--data", str(small_corpus), "--out", str(one), "--set", "max_steps=6", *SMALL, *MUON])
    torchrun("pretrain", "--data", str(small_corpus), "--out", str(two), "--set", "max_steps=6", *SMALL,
             *MUON)
    losses_close(losses(two), losses(one))
    weights_close(one, two, lr=3 * 0.02 / 2)  # the helper's bound is 2 x lr a step
