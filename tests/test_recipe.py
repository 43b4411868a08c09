"""`llmrecipe run`: the whole chain on the embedded world (quality, report, skip, kill + resume) and the
real preset on the shared hub files."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmrecipe.checkpoint import latest_checkpoint
from llmrecipe.eval.harness import trades_over_runs
from llmrecipe.files import read_jsonl
from llmrecipe.recipe import run

from conftest import REDUCED, SEEDS

# RL runs 60 of the preset's 450 steps here (its artifacts and mechanics); its gain is measured on the full
# preset over five seeds by bench/sweep_tiny.py (BENCHMARKS.md), not asserted on these weaker models.
# A much smaller run for the kill/resume and rerun tests: only determinism matters there.
SMALL = {"world.pretrain_docs": "400", "world.sft_conversations": "120", "world.preference_pairs": "48",
         "world.eval_items": "6", "max_steps": "24", "save_interval": "4", "eval_interval": "0",
         "sft.train.max_steps": "16", "sft.train.save_interval": "3", "dpo.train.max_steps": "12",
         "dpo.train.save_interval": "2", "rl.train.max_steps": "24", "rl.train.batch_size": "2",
         "rl.group_size": "4", "rl.train.save_interval": "3", "eval.max_new_tokens": "12",
         "eval.suites": "mmlu_pro_category,gsm8k,ifeval"}
PNG = b"\x89PNG\r\n\x1a\n"




@pytest.mark.parametrize("seed", SEEDS)
def test_tiny_recipe_improves_stage_by_stage(tiny_runs, seed):
    """base < SFT on every analog and SFT < DPO on instruction following, each a paired 95% bootstrap
    interval that excludes zero; DPO not significantly worse elsewhere."""
    _, r = tiny_runs(seed)
    comp = r["table"]["comparisons"]
    print(f"\nworld seed {seed}\n" + r["table"]["markdown"])
    for suite, d in comp["base→sft"]["paired"].items():
        assert d["low"] > 0, f"seed {seed}: SFT does not beat base on {suite}: {d}"
    gain = comp["sft→dpo"]["paired"]["ifeval"]
    assert gain["low"] > 0, f"seed {seed}: DPO − SFT on instruction following {gain}"
    for suite in ("mmlu_pro_category", "gsm8k"):
        d = comp["sft→dpo"]["paired"][suite]
        assert d["high"] >= 0, f"seed {seed}: DPO significantly worse than SFT on {suite}: {d}"
    assert r["table"]["scores"]["dpo"]["mt_bench"]["display"] == "n/a (no judge)"


def _trades(tiny_runs) -> tuple[str, dict]:
    runs = [tuple(read_jsonl(tiny_runs(seed)[0] / "eval" / f"{m}.ifeval.jsonl") for m in ("sft", "dpo"))
            for seed in SEEDS]
    md, r = trades_over_runs(runs)
    print("\n" + md)
    return md, r


def test_tiny_dpo_collapses_no_instruction_type(tiny_runs):
    """The failure that opened issue 13 -- DPO took "end with this phrase" from 12/13 to 1/13 -- never comes
    back: pooled over the world seeds, no instruction type drops by more than 3 standard errors. Why 3: a
    type with no true change crosses -3 stderr with probability 0.13%, under 2% for all 14 types at once, so
    this gate holds on any CPU's rounding, while a collapse like that one (-85 points, ~-10 stderr) fails
    it. The 1-stderr bar of the issue is the test below and the five-seed sweep."""
    _, r = _trades(tiny_runs)
    worst = {k: round(v["delta"] / v["stderr"], 1) for k, v in r["pooled"].items()
             if v["stderr"] and v["delta"] < -3 * v["stderr"]}
    assert not worst, f"instruction types DPO collapsed over seeds {SEEDS} (difference / stderr): {worst}"


# The 1-stderr bar (no type lost pooled over seeds) is not a test here: on these reduced runs a type
# is lost pooled over most pairs of world seeds, so a two-seed test could never be red or green for the
# right reason. `bench/sweep_tiny.py` prints it for the full preset over five seeds (each type's DPO − SFT
# pooled, with the count of per-seed losses noise alone would give); its numbers are in BENCHMARKS.md.


def test_tiny_recipe_report_artifacts(tiny_run):
    out, r = tiny_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["table"]["scores"] == r["table"]["scores"]
    assert set(saved["timings_s"]) == {"world", "data", "pretrain", "sft", "dpo", "rl", "eval", "export"}
    assert all(t > 0 for k, t in saved["timings_s"].items() if k in ("pretrain", "sft", "dpo", "rl"))
    first = json.loads((out / "base" / "metrics.jsonl").read_text().splitlines()[0])
    assert saved["pretrain"]["loss"] < first["loss"] - 2.0  # pre-training learned the world's language
    assert saved["dpo"]["rewards/accuracy"] > 0.5 and saved["dpo"]["rewards/margin"] > 0
    report = (out / "report.md").read_text()
    assert r["table"]["markdown"] in report and "| total |" in report
    for png in ("loss_pretrain.png", "loss_sft.png", "loss_dpo.png", "loss_rl.png", "eval.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 5_000, png
        assert f"]({png})" in report
    assert "**sft→dpo**, paired" in report and "IFEval per instruction type, sft→dpo" in report
    assert "±" in r["table"]["markdown"].splitlines()[2]
    # every stage as a Hugging Face folder (the DPO one: both adapters merged into the weights)
    for name in ("base", "sft", "dpo", "rl"):
        files = {p.name for p in (out / "hf" / name).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    # each eval analog is in its real suite's file layout and schema
    world = out / "world" / "eval"
    first = {name: json.loads((world / name).read_text().splitlines()[0])
             for name in ("ifeval/input_data.jsonl", "gsm8k/test.jsonl")}
    assert first["ifeval/input_data.jsonl"]["instruction_id_list"]
    assert first["gsm8k/test.jsonl"]["answer"].split("#### ")[1].isdigit()


def test_tiny_recipe_rerun_skips_everything(tiny_run, capsys):
    out, r = tiny_run
    capsys.readouterr()
    again = run("tiny", out, dict(REDUCED))
    printed = capsys.readouterr().out
    assert printed.count("up to date, skipped") == 8, printed
    assert again["table"] == r["table"]


def _without_seconds(scores: dict) -> dict:
    return {m: {s: {k: v for k, v in r.items() if k != "seconds"} for s, r in suites.items()}
            for m, suites in scores.items()}


def _cli(out: Path, overrides: dict) -> list[str]:
    return [sys.executable, "-m", "llmrecipe", "run", "--preset", "tiny", "--out", str(out), "--set",
            *(f"{k}={v}" for k, v in overrides.items())]


# Runs `python -m llmrecipe ARGS...` and SIGKILLs the whole process group as the loop asks for step AT of
# the stage named STAGE: after every checkpoint before it is written, before the step computes. A kill at
# a chosen step lands inside the stage on any machine; a sleep after a checkpoint appears does not (a fast
# idle CPU finished the small SFT stage inside half a second).
_KILLER = """
import os, runpy, signal, sys
from llmrecipe.train import loop
stage, at = sys.argv[1], int(sys.argv[2])
sys.argv = ["llmrecipe", *sys.argv[3:]]
get = loop.StepBatches.get
def get_or_die(self, step):
    if self.stage.name == stage and step == at:
        os.killpg(0, signal.SIGKILL)
    return get(self, step)
loop.StepBatches.get = get_or_die
runpy.run_module("llmrecipe", run_name="__main__", alter_sys=True)
"""


def _kill_inside(cmd: list[str], stage: str, stage_dir: Path, at: int) -> None:
    """Run `cmd` (a `python -m llmrecipe ...` line) and kill it as `stage` is about to compute step `at`."""
    args = cmd[cmd.index("llmrecipe") + 1:]
    proc = subprocess.run([sys.executable, "-c", _KILLER, stage, str(at), *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, start_new_session=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, f"run was not killed in {stage}: {proc.stderr[-2000:]}"
    assert latest_checkpoint(stage_dir) is not None, f"no checkpoint in {stage_dir} before the kill"
    assert not (stage_dir / "done.json").exists(), f"the kill landed after {stage_dir.name} finished"


WEIGHTS = ("base/model.safetensors", "sft/adapter_model.safetensors", "dpo/adapter_model.safetensors",
           "rl/adapter_model.safetensors")


def _weight_diffs(a: Path, b: Path) -> dict[str, tuple[str, float]]:
    """{file: (its tensor that differs most, max |Δ|)} for each stage's weights not bit-identical."""
    out = {}
    for f in WEIGHTS:
        x, y = load_file(a / f), load_file(b / f)
        assert x.keys() == y.keys(), f
        if not all(torch.equal(x[n], y[n]) for n in x):
            out[f] = max(((n, float((x[n] - y[n]).abs().max())) for n in x), key=lambda t: t[1])
    return out


def _summaries(out: Path) -> tuple[dict, dict]:
    r = json.loads((out / "results.json").read_text())
    return (_without_seconds(r["table"]["scores"]),
            {k: (r[k]["step"], r[k]["loss"]) for k in ("pretrain", "sft", "dpo", "rl")})


def test_killed_run_resumes_to_the_same_results(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cli(ref, SMALL), check=True, capture_output=True)
    rng = random.Random(8)
    for stage, folder in (("pretrain", "base"), ("sft", "sft"), ("dpo", "dpo"), ("rl", "rl")):
        # any step after the stage's first checkpoint, before its last step
        p = "" if stage == "pretrain" else f"{stage}.train."
        save, steps = int(SMALL[f"{p}save_interval"]), int(SMALL[f"{p}max_steps"])
        at = rng.randrange(save, steps)
        _kill_inside(_cli(killed, SMALL), stage, killed / folder, at)
    subprocess.run(_cli(killed, SMALL), check=True, capture_output=True)
    (scores_a, steps_a), (scores_b, steps_b) = _summaries(ref), _summaries(killed)
    assert {k: s for k, (s, _) in steps_a.items()} == {k: s for k, (s, _) in steps_b.items()}
    resumed = _weight_diffs(ref, killed)
    if not resumed:  # bit for bit: the same weights give the same losses and the same table
        assert steps_a == steps_b and scores_a == scores_b
    else:
        # Was it the resume, or this CPU? Run the uninterrupted reference again. Where two identical
        # processes agree bit for bit (every CPU measured so far), any difference is the resume's fault.
        ref2 = tmp_path / "ref2"
        subprocess.run(_cli(ref2, SMALL), check=True, capture_output=True)
        noise = _weight_diffs(ref, ref2)
        assert noise, f"the resumed run's weights differ from the uninterrupted run's (which reproduces " \
                      f"bit for bit in a second process): {resumed}"
        # This CPU's float kernels differ between two identical processes, so no resume can be bit-exact.
        # A genuine resume error (a step skipped or repeated, the optimizer's moments lost, another batch)
        # moves weights on the learning rate's scale (>= 3e-5 a step here), far above run-to-run noise.
        bound = 100 * max(d for _, d in noise.values())
        assert all(d <= bound for _, d in resumed.values()), f"resume {resumed} vs run-to-run {noise}"
        assert all(abs(steps_a[k][1] - steps_b[k][1]) <= 1e-3 * abs(steps_a[k][1]) + 1e-6 for k in steps_a)

    # a changed DPO setting is one line naming it, deleting nothing; with --redo dpo, DPO and what follows
    # it rerun, and nothing before it
    cmd = _cli(killed, {**SMALL, "dpo.beta": "0.3"})
    changed = subprocess.run(cmd, capture_output=True, text=True)
    assert changed.returncode == 1, changed.stdout[-2000:]
    assert changed.stderr.strip().splitlines() == [
        "error: [dpo] finished with other settings (beta: 0.1 → 0.3): pass --redo dpo to retrain it and what "
        "follows (rl, eval, export), or choose another --out"]
    assert json.loads((killed / "dpo" / "config.json").read_text())["beta"] == 0.1
    redone = subprocess.run([*cmd, "--redo", "dpo"], check=True, capture_output=True, text=True)
    for stage in ("world", "data", "pretrain", "sft"):
        assert f"[{stage}] up to date, skipped" in redone.stdout
    assert "[dpo] redoing (--redo)" in redone.stdout
    assert "[eval] rerunning: a stage before it was redone" in redone.stdout
    assert json.loads((killed / "dpo" / "config.json").read_text())["beta"] == 0.3


@pytest.mark.parametrize("preset", ["gpt2-124m", "modern-124m"])
def test_real_preset_chain_on_the_hub_files(preset, data_dir, tmp_path):
    """gpt2-124m's and modern-124m's loaders and suites end to end on the shared hub files, shrunk to a few
    steps (modern-124m: Muon, the warmup-stable-decay schedule, LoRA on SwiGLU, the Qwen3 export)."""
    shrink = {"model.n_layer": "1", "model.n_head": "2", "model.n_embd": "32", "model.block_size": "512",
              "model.mlp_hidden": "0",
              "batch_size": "2", "grad_accum": "1", "max_steps": "3", "warmup_steps": "1",
              "eval_interval": "0", "eval_batches": "1", "sft.train.max_steps": "2",
              "sft.train.batch_size": "2", "sft.train.grad_accum": "1",
              "dpo.train.max_steps": "2", "dpo.train.batch_size": "2", "dpo.train.grad_accum": "1",
              "dpo.max_examples": "16", "eval.limit": "2", "eval.max_new_tokens": "8",
              "rl.train.max_steps": "1", "rl.train.batch_size": "1", "rl.train.grad_accum": "1",
              "rl.group_size": "2", "rl.max_new_tokens": "4", "rl.max_examples": "4"}
    r = run(preset, tmp_path, shrink, data_dir=str(data_dir))
    assert r["rl"]["step"] == 1 and r["inputs"]["rl"].endswith("eval/gsm8k/train.jsonl")
    assert r["data"]["tokenizer"] == "gpt2" and r["data"]["source"].endswith("pretrain/*.parquet")
    assert r["sft"]["step"] == 2 and r["dpo"]["step"] == 2
    assert r["table"]["suites"] == ["mmlu_pro", "gsm8k", "ifeval", "mt_bench"]
    for model in ("base", "sft", "dpo", "rl"):
        scores = r["table"]["scores"][model]
        assert [scores[s]["items"] for s in ("mmlu_pro", "gsm8k", "ifeval")] == [2, 2, 2]
    assert (tmp_path / "report.md").is_file() and (tmp_path / "eval.png").is_file()
    base = json.loads((tmp_path / "base" / "model.json").read_text())
    assert base["preset"] == preset and (base["config"]["position"] == "rope") == (preset == "modern-124m")
    arch = json.loads((tmp_path / "hf" / "rl" / "config.json").read_text())["architectures"]
    assert arch == (["Qwen3ForCausalLM"] if preset == "modern-124m" else ["GPT2LMHeadModel"])


def test_bad_override_fails_before_any_stage_runs(tmp_path):
    with pytest.raises(ValueError, match="world.nope"):
        run("tiny", tmp_path / "r", {"world.nope": "1"})
    with pytest.raises(ValueError, match="unknown config key 'nope'"):
        run("tiny", tmp_path / "r", {"dpo.nope": "1"})
    assert not (tmp_path / "r").exists()


def test_stage_hash_ignores_how_the_run_folder_is_spelled(tmp_path):
    from llmrecipe.recipe import _hash

    def key(root, lr=0.1):
        return {"data": f"{root}/data", "lr": lr}

    assert _hash(key(tmp_path), tmp_path) == _hash(key("runs/x"), Path("runs/x"))
    assert _hash(key(tmp_path), tmp_path) != _hash(key(tmp_path, lr=0.2), tmp_path)
