"""The documented gpt2-124m commands, taken from docs/commands.md itself and run through the real CLI,
shrunk with `--set`.

What a user would type for the seed's recipe must work as written: the stage commands come out of the docs'
command block (so editing docs/commands.md changes what this test runs), and only two things are changed,
both forced by CI being offline and on a CPU: hub data set ids become the local files in the hub's own
schema from $LLMRECIPE_DATA, and `--set` shrinks the model and the step counts. The presets themselves are
not touched: the test checks that `sft` and `dpo` pick up gpt2-124m's settings from the model folder.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

from conftest import ROOT

SHRINK = {  # per command: --set settings that make a 124M command a CPU-seconds one
    "pretrain": ["n_layer=2", "n_head=2", "n_embd=64", "block_size=128", "batch_size=2", "grad_accum=2",
                 "max_steps=3", "warmup_steps=1", "log_interval=1", "eval_interval=0", "save_interval=3"],
    "sft": ["max_steps=2", "batch_size=2", "grad_accum=2", "log_interval=1"],
    "dpo": ["max_steps=2", "batch_size=2", "grad_accum=2", "log_interval=1"],
}


def readme_command(prefix: str) -> list[str]:
    """The first line of docs/commands.md's command block starting with `prefix`, comment removed, split."""
    block = re.search(r"```bash\n(.*?)```", (ROOT / "docs" / "commands.md").read_text(), re.S)
    assert block, "docs/commands.md lost its command block"
    for line in block.group(1).splitlines():
        if line.startswith(prefix):
            return shlex.split(line.split("#", 1)[0])
    raise AssertionError(f"docs/commands.md no longer has a command starting {prefix!r}")


def cli(args: list[str], cwd, env) -> str:
    assert args[0] == "llmrecipe"
    proc = subprocess.run([sys.executable, "-m", "llmrecipe", *args[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{shlex.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_readme_gpt2_124m_commands_run_as_written(data_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"),
           "LLMRECIPE_GPT2_RANKS": str(data_dir / "tokenizer" / "r50k_base.tiktoken")}
    hub = {"HuggingFaceH4/ultrachat_200k": str(data_dir / "sft" / "ultrachat_200k_sample20.jsonl"),
           "HuggingFaceH4/ultrafeedback_binarized":
               str(data_dir / "preference" / "ultrafeedback" / "train_clean.jsonl")}

    def local(args: list[str]) -> list[str]:
        return [hub.get(a, a) for a in args]

    # data/fineweb: the docs' `prepare text` form on the local FineWeb-Edu sample (`prepare fineweb` streams)
    sample = data_dir / "pretrain" / "fineweb_edu_sample10BT_150.jsonl"
    cli(["llmrecipe", "prepare", "text", "--input", str(sample), "--out", "data/fineweb",
         "--tokenizer", "gpt2", "--val-every", "10", "--workers", "1"], tmp_path, env)

    pre = readme_command("llmrecipe pretrain --preset gpt2-124m")
    assert pre[pre.index("--data") + 1] == "data/fineweb"
    log = cli(pre + ["--set", *SHRINK["pretrain"]], tmp_path, env)
    assert "preset gpt2-124m" in log
    base = tmp_path / pre[pre.index("--out") + 1]
    assert json.loads((base / "model.json").read_text())["preset"] == "gpt2-124m"

    sft = readme_command("llmrecipe sft --base runs/base --data HuggingFaceH4/")
    log = cli(local(sft) + ["--set", *SHRINK["sft"]], tmp_path, env)
    # no --preset given: the base's preset is used and printed, with gpt2-124m's SFT settings (not tiny's)
    assert "sft: preset gpt2-124m (the preset" in log, log
    assert re.search(r"lr 0\.0002 \(constant.*LoRA r 16 alpha 32 dropout 0\.05", log), log

    dpo = readme_command("llmrecipe dpo --sft runs/sft --data HuggingFaceH4/")
    log = cli(local(dpo) + ["--set", *SHRINK["dpo"]], tmp_path, env)
    assert "dpo: preset gpt2-124m (the preset" in log, log
    assert re.search(r"lr 5e-06 .*LoRA r 16 alpha 32 dropout 0, beta 0\.1", log), log
    assert (tmp_path / dpo[dpo.index("--out") + 1] / "adapter_model.safetensors").is_file()

    ev = readme_command("llmrecipe eval --model runs/base --suites")
    cli(ev + ["--data-dir", str(data_dir / "eval"), "--limit", "3"], tmp_path, env)
    summary = json.loads((tmp_path / ev[ev.index("--out") + 1]).read_text())
    assert sorted(summary["suites"]) == sorted(ev[ev.index("--suites") + 1].split(",")), summary
    assert summary["limit"] == 3

    exp = readme_command("llmrecipe export --model runs/dpo")
    cli(exp, tmp_path, env)
    hf = tmp_path / exp[exp.index("--out") + 1]
    assert json.loads((hf / "config.json").read_text())["vocab_size"] == 50257
    assert (hf / "model.safetensors").is_file()
