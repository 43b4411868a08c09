"""Shared fixtures. Real data comes from one setting: $LLMRECIPE_DATA (default ../shared/data)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LLMRECIPE_DATA", ROOT.parent / "shared" / "data")).resolve()
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
