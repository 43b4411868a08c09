"""The GPU check (bench/gpu_check.py) must not rot between the days a GPU is lent: CI runs it shrunken on CPU,
through the same commands (prepare, pretrain compiled and eager, sft, dpo, the engine) and the HF peer."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT


def test_gpu_check_runs_shrunken_on_cpu(data_dir, tmp_path):
    out = tmp_path / "bench.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--small", "--steps", "4",
                           "--data", str(data_dir), "--work", str(tmp_path / "work"), "--append", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.read_text()
    assert "### GPU check — CPU — " in table and "--small" in table
    for row in ("pretrain compiled: tokens/s", "pretrain eager: tokens/s", "HF GPT2LMHeadModel (SDPA)",
                "ours / HF (eager)", "fp32 vs bf16 autocast", "sft (LoRA", "dpo (LoRA", "engine scoring",
                "engine decoding", "accum: tokens/s"):
        m = re.search(re.escape(row) + r"[^|]*\| ([0-9.,]+)", table)
        assert m and float(m.group(1).replace(",", "")) > 0, row
    assert "EXCEEDED" not in table  # bf16 autocast and fp32 agree after the same steps


def test_profile_step_runs_on_cpu():
    """bench/profile_step.py (the GPU's kernel table) must not rot: its CPU run prints rates and a table."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "profile_step.py"), "--preset", "tiny",
                           "--batch", "2", "--seq", "32", "--steps", "1", "--no-compile", "--top", "3",
                           "--decode", "4"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"decode, batch 16: [0-9.]+ ms/step \(4 steps\)", proc.stdout), proc.stdout
    m = re.search(r"B=2 T=32: [0-9.]+ ms/step, ([0-9,]+) tokens/s", proc.stdout)
    assert m and int(m.group(1).replace(",", "")) > 0, proc.stdout
    assert "Self CPU time total" in proc.stdout


def test_bench_rl_step_compares_each_speedup_with_what_it_replaced(tiny_base, data_dir):
    """bench/bench_rl_step.py must not rot: one timed step per row, before and now, on the real GSM8K file."""
    script = str(ROOT / "bench" / "bench_rl_step.py")
    proc = subprocess.run([sys.executable, script, "--model", str(tiny_base),
                           "--data", str(data_dir / "eval" / "gsm8k" / "train.jsonl"), "--steps", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("sampling one token", "generation", "addmm", "answers only", "both", "prefill", "once (now)"):
        m = re.search(re.escape(row) + r"[^|]*\| ([0-9.]+) \| ([0-9.]+) \|", proc.stdout)
        assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, (row, proc.stdout)


def test_bench_batches_times_both_layouts_of_sft_and_dpo(tiny_base, data_dir):
    """bench/bench_batches.py must not rot: SFT padded vs packed, DPO whole rows vs a shared prompt, on real
    chat and preference files; the layouts the stages choose never compute more positions than before (on
    these long conversations, near the 256-token context, they mostly keep the old layout)."""
    script = str(ROOT / "bench" / "bench_batches.py")
    proc = subprocess.run([sys.executable, script, "--base", str(tiny_base), "--sft", str(tiny_base),
                           "--sft-data", str(data_dir / "sft" / "ultrachat_200k_sample20.jsonl"),
                           "--pairs", str(data_dir / "preference" / "ultrafeedback" /
                                          "ufb_h4schema_reconstructed_train_clean.parquet"), "--steps", "4"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("SFT", "DPO"):
        cells = r"[^|]*\| ([0-9.]+) \| ([0-9.]+) \| [0-9.]+x \| ([0-9]+)% → ([0-9]+)% \|"
        m = re.search(row + cells, proc.stdout)
        assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, (row, proc.stdout)
        assert int(m.group(4)) >= int(m.group(3)), (row, proc.stdout)  # no more padding or repetition


def test_val_loss_reads_every_window_and_agrees_with_the_loop(tiny_base, small_corpus):
    """bench/val_loss.py (how BENCHMARKS ranks pre-training runs): on its first windows it gives the training
    loop's val_loss (PretrainStage.evaluate: batch means of the same unshuffled windows), and over all of them
    the token-weighted mean, below the uniform guess ln(vocab)."""
    import math

    import torch

    from llmrecipe.checkpoint import load_model
    from llmrecipe.data.loader import TokenWindows

    script = str(ROOT / "bench" / "val_loss.py")
    rows = {}
    for windows in ("16", None):
        cmd = [sys.executable, script, "--data", str(small_corpus), str(tiny_base)]
        proc = subprocess.run(cmd + (["--windows", windows] if windows else []), capture_output=True,
                              text=True, timeout=300, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        m = re.search(r"\| ([0-9.]+) \| ([0-9.]+) \| ([0-9,]+) \|", proc.stdout)
        assert m, proc.stdout
        rows[windows] = float(m.group(1)), int(m.group(3).replace(",", ""))
    model, _ = load_model(tiny_base)
    cfg = model.config
    val = TokenWindows(small_corpus, "val", cfg.block_size, 0, cfg.vocab_size, shuffle=False)
    with torch.no_grad():  # the loop's way: two batches of 8 windows, the mean of their means
        ref = sum(model.eval()(*val.batch(i * 8, 8))[1].item() for i in range(2)) / 2
    loss16, tokens16 = rows["16"]
    assert tokens16 == 16 * cfg.block_size
    assert abs(loss16 - ref) <= 1e-4 * ref + 5e-5, (loss16, ref)  # printed to 4 decimals
    loss_all, tokens_all = rows[None]
    assert tokens_all == val.num_windows * cfg.block_size > tokens16
    with torch.no_grad():  # every window, token-weighted, in batches of 8 (the last one shorter)
        parts = [(model(*val.batch(s, min(8, val.num_windows - s)))[1].item(), min(8, val.num_windows - s))
                 for s in range(0, val.num_windows, 8)]
    ref_all = sum(loss * n for loss, n in parts) / val.num_windows
    assert abs(loss_all - ref_all) <= 1e-4 * ref_all + 5e-5, (loss_all, ref_all)
    assert loss_all < math.log(cfg.vocab_size), loss_all  # a trained model beats the uniform guess


def test_arith_probe_asks_every_fact_of_the_world_with_its_right_result(tiny_base):
    """bench/arith_probe.py: the facts are every (a, op, b) the world's word problems can ask (a in 2..10,
    b in 1..9; a subtraction's larger number first), each cut at its '=' with the true result after it; the
    script prints probabilities for a model."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("arith_probe", ROOT / "bench" / "arith_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    items = mod.facts(0)
    want = {(a, "+", b) for a in range(2, 11) for b in range(1, 10)}
    want |= {(max(a, b), "-", min(a, b)) for a in range(2, 11) for b in range(1, 10)}
    got = {}
    for q, upto, result in items:
        m = re.search(r"(\d+) ([+-]) (\d+) =$", upto)
        assert m and m.group(1) in q and m.group(3) in q, (q, upto)
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        got[(a, op, b)] = result
        assert result == f" {a + b if op == '+' else a - b}.", (upto, result)
    assert set(got) == want and len(items) == len(want) == 134
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "arith_probe.py"), str(tiny_base)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"\| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|", proc.stdout)
    assert "134 facts" in proc.stdout and m and all(0 <= float(v) <= 1 for v in m.groups()), proc.stdout


def test_compare_presets_trains_every_variant_on_the_same_data(tmp_path):
    """bench/compare_presets.py: modern-tiny pre-trains for fewer steps than tiny in its preset, but in the
    comparison every variant takes the baseline's steps and batch (equal data), and the table prints."""
    script = str(ROOT / "bench" / "compare_presets.py")
    proc = subprocess.run([sys.executable, script, "--seeds", "0", "--out", str(tmp_path), "--set",
                           "max_steps=4", "eval_batches=1", "--eval-interval", "2", "--variant", "tiny",
                           "tiny", "--variant", "modern", "modern-tiny"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = {v: [json.loads(x) for x in (tmp_path / "seed0" / v / "metrics.jsonl").read_text().splitlines()
                if "tokens" in x][-1] for v in ("tiny", "modern")}
    assert last["tiny"]["step"] == last["modern"]["step"] == 4
    assert last["tiny"]["tokens"] == last["modern"]["tokens"] == 4 * 16 * 256
    assert re.search(r"\| modern \| 500,480 \| [0-9]+ \| [0-9.]+ \|", proc.stdout), proc.stdout


def test_compare_presets_on_the_wikipedia_sample_offline(data_dir, tmp_path):
    """--corpus enwiki, with no ranks setting in the environment (a fresh offline machine): the shards record
    the tokenizer as plain `gpt2`, so the script must hand pre-training the ranks file it prepared with."""
    if not (data_dir / "pretrain" / "enwiki2015" / "enwiki2015_train.parquet").is_file():
        pytest.skip("the Wikipedia sample (pretrain/enwiki2015) is not in the shared data folder")
    env = {k: v for k, v in os.environ.items() if k not in ("LLMRECIPE_GPT2_RANKS", "TIKTOKEN_CACHE_DIR")}
    env["TIKTOKEN_CACHE_DIR"] = str(tmp_path / "empty-cache")  # nothing cached: only the data folder's ranks
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "compare_presets.py"), "--corpus", "enwiki",
                           "--data", str(data_dir), "--seeds", "0", "--out", str(tmp_path), "--set",
                           "n_layer=1", "n_head=2", "n_embd=32", "block_size=32", "batch_size=2",
                           "max_steps=2", "warmup_steps=1", "eval_batches=1", "--eval-interval", "1",
                           "--variant", "gpt2", "gpt2-124m", "--variant", "modern", "modern-124m",
                           "mlp_hidden=64"], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"\| modern \| [0-9,]+ \| [0-9]+ \| [0-9.]+ \|", proc.stdout), proc.stdout


def test_gpu_check_modern_runs_shrunken_on_cpu(data_dir, tmp_path):
    """The --modern half of the GPU check (modern-124m, the chunked cross-entropy, B x 2, both presets on one
    budget of Wikipedia tokens) through the same commands, shrunken."""
    if not (data_dir / "pretrain" / "enwiki2015" / "enwiki2015_train.parquet").is_file():
        pytest.skip("the Wikipedia sample (pretrain/enwiki2015) is not in the shared data folder")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--small", "--modern",
                           "--steps", "4", "--data", str(data_dir), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("modern-124m eager, B=4: tokens/s", "ce_chunk 64: tokens/s", "B=8, ce_chunk 64: tokens/s"):
        m = re.search(re.escape(row) + r"[^|]*\| ([0-9.,]+)", proc.stdout)
        assert m and float(m.group(1).replace(",", "")) > 0, (row, proc.stdout)
    m = re.search(r"val loss gpt2-124m vs modern-124m \| ([0-9.]+) vs ([0-9.]+)", proc.stdout)
    assert m and all(0 < float(v) < 11.5 for v in m.groups()), proc.stdout  # below ln(50257) = 10.8 + noise
