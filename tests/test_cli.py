"""The commands as a user types them, in-process: prepare → pretrain → sft → dpo → merge → generate."""
import json

import pytest
import torch

from fp32 import assert_fp32_close
from llmrecipe.checkpoint import load_model
from llmrecipe.cli import main
from llmrecipe.config import load_preset
from llmrecipe.train.dpo import DPOConfig

SMALL = ["n_layer=2", "n_head=2", "n_embd=64", "block_size=128", "log_interval=5", "eval_interval=0",
         "save_interval=1000"]


def test_stage_commands_chain(data_dir, tmp_path, capsys):
    pre = data_dir / "pretrain"
    main(["prepare", "text", "--input", str(pre / "c4_demo.jsonl"), "--out", str(tmp_path / "data"),
          "--tokenizer", "bpe", "--vocab-size", "400", "--workers", "1"])
    main(["pretrain", "--preset", "tiny", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "base"),
          "--set", "max_steps=10", "vocab_size=400", *SMALL])
    main(["sft", "--base", str(tmp_path / "base"),
          "--data", str(data_dir / "sft" / "ultrachat_200k_sample20.parquet"), "--out", str(tmp_path / "sft"),
          "--set", "max_steps=4", "batch_size=2", "log_interval=2"])
    main(["dpo", "--sft", str(tmp_path / "sft"), "--out", str(tmp_path / "dpo"), "--data",
          str(data_dir / "preference" / "ultrafeedback" / "train_clean.jsonl"), "--beta", "0.2",
          "--set", "max_steps=3", "batch_size=2", "max_examples=20", "log_interval=1"])
    resolved = json.loads((tmp_path / "dpo" / "config.json").read_text())
    assert resolved["beta"] == 0.2 and resolved["train"]["max_steps"] == 3
    # no --preset: each stage took the preset its input was trained with, and said so before training
    assert json.loads((tmp_path / "base" / "model.json").read_text())["preset"] == "tiny"
    tiny_rpo = load_preset("tiny")["dpo"]["rpo_alpha"]
    assert tiny_rpo != DPOConfig().rpo_alpha  # so the check below tells the preset from the default
    assert resolved["preset"] == "tiny" and resolved["rpo_alpha"] == tiny_rpo  # tiny's DPO, not the default
    out = capsys.readouterr().out
    assert "sft: preset tiny (the preset" in out and "dpo: preset tiny (the preset" in out
    assert "sft: preset tiny — lr 0.005 (cosine, warmup 10)" in out
    # --model base --adapter dpo would silently drop the SFT step: the whole chain is loaded, and said so
    capsys.readouterr()
    rebuilt, _ = load_model(tmp_path / "base", adapter=tmp_path / "dpo")
    assert "was trained on" in capsys.readouterr().out
    whole, _ = load_model(tmp_path / "dpo")
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), whole.state_dict().values()))
    import shutil
    shutil.copytree(tmp_path / "base", tmp_path / "other")  # a different model folder
    with pytest.raises(ValueError, match="was not trained on"):
        load_model(tmp_path / "other", adapter=tmp_path / "sft")
    cfg = json.loads((tmp_path / "sft" / "adapter_config.json").read_text())
    (tmp_path / "loop").mkdir()
    shutil.copy(tmp_path / "sft" / "adapter_model.safetensors", tmp_path / "loop")
    (tmp_path / "loop" / "adapter_config.json").write_text(json.dumps(
        {**cfg, "base_model_name_or_path": str((tmp_path / "loop").resolve())}))
    with pytest.raises(SystemExit, match="adapter chain loops"):
        main(["eval", "--model", str(tmp_path / "loop"), "--suites", "gsm8k"])
    main(["merge", "--model", str(tmp_path / "dpo"), "--out", str(tmp_path / "merged")])
    merged, _ = load_model(tmp_path / "merged")
    chained, _ = load_model(tmp_path / "dpo")  # base → +sft merged → +dpo merged
    idx = torch.randint(0, 400, (1, 12))
    c = merged.config
    assert_fp32_close(merged(idx)[0], chained(idx)[0], c.n_layer * (5 * c.n_embd + c.block_size), "merged")
    capsys.readouterr()
    main(["generate", "--model", str(tmp_path / "merged"), "--prompt", "The", "--max-new-tokens", "5",
          "--seed", "1"])
    assert capsys.readouterr().out.startswith("The")


def _fake_base(folder, preset=None, **model):
    """A model folder's JSON only: the preset is chosen before any weight is read."""
    from llmrecipe.model import GPTConfig

    folder.mkdir(parents=True)
    meta = {"config": GPTConfig(**model).to_dict(), **({"preset": preset} if preset else {})}
    (folder / "model.json").write_text(json.dumps(meta))
    return str(folder)


def test_stage_commands_default_to_the_models_preset(tmp_path, capsys):
    sft = ["sft", "--data", "x.jsonl", "--out", str(tmp_path / "o")]
    big = _fake_base(tmp_path / "big", preset="gpt2-124m")  # a 124M base trained with its preset
    with pytest.raises(SystemExit, match="not a model folder"):  # weights missing: after the preset is chosen
        main([*sft, "--base", big])
    assert "sft: preset gpt2-124m (the preset" in capsys.readouterr().out
    unrecorded = _fake_base(tmp_path / "unrecorded")  # GPT-2 small's shape, no record: matched by shape
    with pytest.raises(SystemExit):
        main([*sft, "--base", unrecorded])
    assert "sft: preset gpt2-124m (the preset whose model is" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # an explicit preset for another model: a loud warning, naming both
        main([*sft, "--base", big, "--preset", "tiny"])
    err = capsys.readouterr().err
    assert "WARNING: --preset tiny describes another model" in err and "n_layer 2 vs 12" in err
    assert "trained with --preset gpt2-124m" in err
    odd = _fake_base(tmp_path / "odd", n_layer=3, n_embd=96, n_head=3, vocab_size=500, block_size=64)
    with pytest.raises(SystemExit, match="records no preset .* matches none of the presets: pass --preset"):
        main([*sft, "--base", odd])


def test_user_errors_exit_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="error: unknown config key 'n_layers'"):
        main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "n_layers=2"])
    with pytest.raises(SystemExit, match="not a model folder"):
        main(["sft", "--base", str(tmp_path), "--data", "x.jsonl", "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("key, value, rule", [
    ("grad_accum", "0", "≥ 1"), ("lr", "-1e-3", "> 0"), ("min_lr", "-1", "≥ 0"),
    ("warmup_steps", "-5", "≥ 0"),
    ("schedule", "linear", "one of cosine, constant"), ("n_layer", "0", "≥ 1"), ("dropout", "1.5", "[0, 1)"),
    ("save_interval", "0", "≥ 1"), ("log_interval", "0", "≥ 1"), ("compile", "maybe", "one of auto"),
    ("n_embd", "102", "divisible by n_head"),
])
def test_settings_that_would_train_nonsense_are_one_line_errors(tmp_path, key, value, rule):
    """Range-checked when the config is resolved: before any data is read or folder written."""
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--preset", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
              "--set", f"{key}={value}"])
    msg = str(e.value)
    assert msg.startswith("error: config key") and key in msg and rule in msg and "\n" not in msg, msg
    assert not (tmp_path / "o").exists()


def test_stage_and_run_settings_are_validated_before_anything_runs(tmp_path):
    from llmrecipe.config import apply_overrides
    from llmrecipe.recipe import run
    from llmrecipe.train import stage_config

    for stage, key, value in (("dpo", "beta", "0"), ("dpo", "epochs", "-1"), ("sft", "r", "0"),
                              ("sft", "epochs", "0")):
        with pytest.raises(ValueError, match=f"config key '(lora.)?{key}'"):
            apply_overrides(stage_config(stage, "tiny"), {key: value})
    for overrides, match in (({"eval.suites": "gsm8kk"}, "unknown suite"),
                             ({"eval.max_new_tokens": "0"}, "max_new_tokens"), ({"dpo.beta": "-0.1"}, "beta"),
                             ({"sft.train.grad_accum": "0"}, "grad_accum")):
        with pytest.raises(ValueError, match=match):
            run("tiny", tmp_path / "r", overrides)
        assert not (tmp_path / "r").exists()
