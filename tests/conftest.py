"""Shared fixtures. Real data comes from one setting: $LLMRECIPE_DATA (default ../shared/data)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LLMRECIPE_DATA", ROOT.parent / "shared" / "data")).resolve()
if (DATA / "nltk_data").is_dir():
    os.environ.setdefault("NLTK_DATA", str(DATA / "nltk_data"))
if (DATA / "tokenizer" / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(DATA / "tokenizer" / "tiktoken_cache"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real test data not found at {DATA} (set LLMRECIPE_DATA to the shared data folder)")
    return DATA


@pytest.fixture(scope="session")
def small_corpus(data_dir, tmp_path_factory) -> Path:
    """The real FineWeb-Edu + C4 sample, tokenized with a 512-token BPE trained on it (fast CPU training)."""
    from llmrecipe.data.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("corpus")
    prepare(PrepareConfig(source=[str(data_dir / "pretrain" / "fineweb_edu_sample10BT_150.jsonl"),
                                  str(data_dir / "pretrain" / "c4_demo.jsonl")],
                          out=str(out), tokenizer="bpe", bpe_vocab_size=512, workers=1, val_every=20))
    return out


@pytest.fixture(scope="session")
def tiny_base(small_corpus, tmp_path_factory) -> Path:
    """A 2-layer, 64-wide base pre-trained for 200 steps on the real corpus sample (a model folder)."""
    from llmrecipe.model import GPTConfig
    from llmrecipe.train.loop import TrainConfig
    from llmrecipe.train.pretrain import PretrainConfig, run_pretrain

    out = tmp_path_factory.mktemp("tiny_base")
    cfg = PretrainConfig(model=GPTConfig(n_layer=2, n_head=2, n_embd=64, vocab_size=512, block_size=256),
                         train=TrainConfig(batch_size=8, grad_accum=1, max_steps=200, lr=1e-2, min_lr=1e-3,
                                           warmup_steps=10, log_interval=50, eval_interval=0,
                                           save_interval=1000),
                         data=str(small_corpus))
    run_pretrain(cfg, out)
    return out


# A reduced `tiny` (≈2.5 minutes on 2 AMD EPYC cores): a smaller world, half the pre-training, the preset's
# preference pairs; the eval analogs keep their 300 items each, so the differences asserted below are
# resolved (±3 points), not noise.
REDUCED = {"world.pretrain_docs": "10000", "world.sft_conversations": "2000",
           "world.preference_pairs": "2400",
           "max_steps": "500", "eval_interval": "0", "rl.train.max_steps": "60"}
SEEDS = (0, 1)  # the headline must hold on more than one world (bench/sweep_tiny.py: all five of 0-4)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """`run --preset tiny` reduced, per world seed, trained once a session (test_recipe, test_web)."""
    from llmrecipe.recipe import run

    cache: dict[int, tuple[Path, dict]] = {}

    def get(seed: int) -> tuple[Path, dict]:
        if seed not in cache:
            out = tmp_path_factory.mktemp(f"tiny_run{seed}")
            cache[seed] = out, run("tiny", out, {**REDUCED, "world.seed": str(seed)})
        return cache[seed]
    return get


@pytest.fixture(scope="session")
def tiny_run(tiny_runs) -> tuple[Path, dict]:
    return tiny_runs(SEEDS[0])
