"""The commands as a user types them, in-process: prepare → pretrain → sft → dpo → merge → generate."""
import json

import pytest
import torch

from fp32 import assert_fp32_close
from llmrecipe.checkpoint import load_model
from llmrecipe.cli import main

SMALL = ["n_layer=2", "n_head=2", "n_embd=64", "block_size=128", "log_interval=5", "eval_interval=0",
         "save_interval=1000"]


def test_stage_commands_chain(data_dir, tmp_path, capsys):
    pre = data_dir / "pretrain"
    main(["prepare", "text", "--input", str(pre / "c4_demo.jsonl"), "--out", str(tmp_path / "data"),
          "--tokenizer", "bpe", "--vocab-size", "400", "--workers", "1"])
    main(["pretrain", "--preset", "tiny", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "base"),
          "--set", "max_steps=10", "vocab_size=400", *SMALL])
    main(["sft", "--base", str(tmp_path / "base"), "--data", str(data_dir / "sft" / "ultrachat_200k_sample20.parquet"),
          "--out", str(tmp_path / "sft"), "--set", "max_steps=4", "batch_size=2", "log_interval=2"])
    main(["dpo", "--sft", str(tmp_path / "sft"), "--out", str(tmp_path / "dpo"), "--data",
          str(data_dir / "preference" / "ultrafeedback" / "train_clean.jsonl"), "--beta", "0.2",
          "--set", "max_steps=3", "batch_size=2", "max_examples=20", "log_interval=1"])
    resolved = json.loads((tmp_path / "dpo" / "config.json").read_text())
    assert resolved["beta"] == 0.2 and resolved["train"]["max_steps"] == 3
    main(["merge", "--model", str(tmp_path / "dpo"), "--out", str(tmp_path / "merged")])
    merged, _ = load_model(tmp_path / "merged")
    chained, _ = load_model(tmp_path / "dpo")  # base → +sft merged → +dpo merged
    idx = torch.randint(0, 400, (1, 12))
    c = merged.config
    assert_fp32_close(merged(idx)[0], chained(idx)[0], c.n_layer * (5 * c.n_embd + c.block_size), "merged")
    capsys.readouterr()
    main(["generate", "--model", str(tmp_path / "merged"), "--prompt", "The", "--max-new-tokens", "5", "--seed", "1"])
    assert capsys.readouterr().out.startswith("The")


def test_user_errors_exit_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="error: unknown config key 'n_layers'"):
        main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "n_layers=2"])
    with pytest.raises(SystemExit, match="not a model folder"):
        main(["sft", "--base", str(tmp_path), "--data", "x.jsonl", "--out", str(tmp_path / "o")])
