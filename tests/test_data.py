import json
import subprocess
import sys

import numpy as np
import pytest

from llmrecipe.data.loader import TokenWindows
from llmrecipe.data.prepare import PrepareConfig, prepare
from llmrecipe.data.shards import HEADER_BYTES, read_shard, write_shard
from llmrecipe.data.sources import DataError
from llmrecipe.tokenizer import GPT2Tokenizer, load_from_dir


def test_gpt2_tokenizer_offline_from_cache_and_from_ranks_file(data_dir):
    assert GPT2Tokenizer().encode("Hello world") == [15496, 995]
    tok = GPT2Tokenizer(str(data_dir / "tokenizer" / "r50k_base.tiktoken"))
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.vocab_size, tok.eot_id) == (50257, 50256)


def test_shards_round_trip_with_real_gpt2_tokenizer(data_dir, tmp_path):
    src = data_dir / "pretrain" / "fineweb_edu_sample10BT_150.jsonl"
    meta = prepare(PrepareConfig(source=str(src), out=str(tmp_path), tokenizer="gpt2", workers=2,
                                 shard_tokens=50_000, val_every=10))
    assert len(meta["train_shards"]) > 1 and meta["documents"] == 150
    docs = [json.loads(line)["text"] for line in src.read_text().splitlines() if line.strip()]
    tok = load_from_dir(tmp_path)
    train = np.concatenate([read_shard(tmp_path / s) for s in meta["train_shards"]])
    val = np.concatenate([read_shard(tmp_path / s) for s in meta["val_shards"]])
    assert train.size == meta["train_tokens"] and val.size == meta["val_tokens"]
    # EOT after every document; documents 0, 10, 20, ... went to validation, in order
    train_docs = tok.decode(train.tolist()).split("<|endoftext|>")[:-1]
    val_docs = tok.decode(val.tolist()).split("<|endoftext|>")[:-1]
    assert val_docs == docs[::10]
    assert train_docs == [d for i, d in enumerate(docs) if i % 10]


def test_max_tokens_limits_training_tokens(data_dir, tmp_path):
    meta = prepare(PrepareConfig(source=str(data_dir / "pretrain" / "c4_demo.jsonl"), out=str(tmp_path),
                                 tokenizer="gpt2", workers=1, max_tokens=5000, chunk_docs=4))
    assert 5000 <= meta["train_tokens"] < 5000 + 4 * 2000


def test_loader_is_deterministic_and_splits_ranks(small_corpus):
    a = TokenWindows(small_corpus, "train", 32, seed=1)
    b = TokenWindows(small_corpus, "train", 32, seed=1)
    x, y = a.batch(5, 4)
    assert x.shape == (4, 32) and (x[:, 1:] == y[:, :-1]).all()
    assert (b.batch(5, 4)[0] == x).all()
    # a batch of 4 is the concatenation of two rank-slices of 2
    assert (torch_cat([a.batch(5, 2)[0], a.batch(7, 2)[0]]) == x).all()
    assert not (TokenWindows(small_corpus, "train", 32, seed=2).batch(5, 4)[0] == x).all()
    # an epoch is a permutation: every window once
    n = a.num_windows
    firsts = {tuple(a.window(k)[:8]) for k in range(n)}
    assert len(firsts) > 0.95 * n


def torch_cat(ts):
    import torch
    return torch.cat(ts)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_missing_text_column_names_file_and_row(tmp_path):
    f = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"content": "no text here"}])
    with pytest.raises(DataError, match=r"bad.jsonl, row 2: no 'text' column \(columns: content\)"):
        prepare(PrepareConfig(source=str(f), out=str(tmp_path / "o"), tokenizer="gpt2", workers=1))


def test_empty_file_and_bad_json_are_named(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl: file is empty"):
        prepare(PrepareConfig(source=str(tmp_path / "empty.jsonl"), out=str(tmp_path / "o"), workers=1))
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match="broken.jsonl, line 2: not valid JSON"):
        prepare(PrepareConfig(source=str(tmp_path / "broken.jsonl"), out=str(tmp_path / "o"), workers=1))


def test_corrupt_shard_header_and_out_of_vocab_ids(tmp_path):
    write_shard(tmp_path / "train_000000.bin", np.arange(100) % 50, vocab_size=50)
    assert TokenWindows(tmp_path, "train", 8).num_windows == 12
    raw = bytearray((tmp_path / "train_000000.bin").read_bytes())
    raw[0:4] = b"\0\0\0\0"
    (tmp_path / "train_000000.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"train_000000.bin: corrupt shard header \(bad magic"):
        TokenWindows(tmp_path, "train", 8)
    write_shard(tmp_path / "train_000000.bin", np.arange(100) % 50, vocab_size=50)
    shard = tmp_path / "train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:HEADER_BYTES + 20])
    with pytest.raises(DataError, match="corrupt shard"):
        TokenWindows(tmp_path, "train", 8)
    write_shard(tmp_path / "train_000000.bin", np.arange(100) % 50, vocab_size=50)
    with pytest.raises(DataError, match="shard vocabulary 50 > model vocab_size 40"):
        TokenWindows(tmp_path, "train", 8, vocab_size=40)
    with pytest.raises(DataError, match=r"token id 60 >= vocab_size 50"):
        write_shard(tmp_path / "x.bin", np.array([1, 60]), vocab_size=50)


def test_cli_reports_bad_input_in_one_line(tmp_path):
    f = _write_jsonl(tmp_path / "bad.jsonl", [{"body": "x"}])
    r = subprocess.run([sys.executable, "-m", "llmrecipe", "prepare", "text", "--input", str(f), "--out",
                        str(tmp_path / "o"), "--tokenizer", "gpt2", "--workers", "1"],
                       capture_output=True, text=True)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "bad.jsonl, row 1: no 'text' column" in last
    assert "Traceback" not in r.stderr
