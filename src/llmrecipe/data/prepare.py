"""Documents → token shards: tokenize in worker processes, EOT after every document, a validation split.

Every `val_every`-th document (up to `max_val_tokens`) goes to `val_000000.bin`, the rest to
`train_*.bin`; choosing by document keeps the split deterministic while streaming, whatever the size.
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..files import atomic_write_json, check_out, folder_lock
from ..progress import progress
from ..tokenizer import Tokenizer, load_tokenizer, train_bpe
from .shards import MAX_VOCAB, ShardWriter
from .sources import iter_rows, text_of

FINEWEB = dict(source="HuggingFaceFW/fineweb-edu", config="sample-10BT", split="train")


@dataclass
class PrepareConfig:
    source: str | list[str]  # documents: files, folders, globs, or one hub id
    out: str  # the shard folder
    tokenizer: str = "gpt2"  # a tokenizer spec, or "bpe" to train a byte-level BPE of `bpe_vocab_size`
    bpe_vocab_size: int = 2048  # vocabulary of a trained BPE (tokenizer: bpe)
    bpe_train_docs: int = 20_000  # documents the BPE is trained on
    split: str = "train"  # hub split (hub ids only)
    config: str | None = None  # hub data set config (fineweb-edu: sample-10BT)
    text_field: str = "text"  # the column holding each document
    max_tokens: int | None = None  # stop after this many training tokens
    shard_tokens: int = 100_000_000  # tokens per shard file
    val_every: int = 100  # every N-th document goes to the validation shard
    max_val_tokens: int = 10_000_000  # cap on the validation shard
    workers: int = max(1, min(8, (os.cpu_count() or 1) - 1))  # tokenizer processes
    chunk_docs: int = 64  # documents per task sent to a worker
    overwrite: bool = False  # replace an earlier prepare's output in `out` (only its own files)


_worker_tok: Tokenizer | None = None


def _init_worker(spec: str) -> None:
    global _worker_tok
    _worker_tok = load_tokenizer(spec)


def _encode_chunk(texts: list[str]) -> list[np.ndarray]:
    assert _worker_tok is not None
    eot = _worker_tok.eot_id
    return [np.array(ids + [eot], dtype=np.uint16) for ids in _worker_tok.encode_batch(texts)]


def _texts(cfg: PrepareConfig) -> Iterator[str]:
    for row in iter_rows(cfg.source, cfg.split, cfg.config):
        text = text_of(row, cfg.text_field)
        if text.strip():
            yield text


def _chunks(it: Iterator, n: int) -> Iterator[list]:
    while chunk := list(itertools.islice(it, n)):
        yield chunk


# What prepare writes into its folder; with --overwrite exactly these are removed first.
OWN_FILES = ("meta.json", "tokenizer.json", "tokenizer_spec.json", "train_*.bin", "val_*.bin", ".lock")


def claim_folder(out: Path, overwrite: bool) -> None:
    """`out` must be empty, or (with `overwrite`) hold only an earlier prepare's files, which go: shards
    left from a larger earlier prepare would otherwise be read as training data."""
    present = [p for p in out.iterdir()] if out.is_dir() else []
    own = [p for p in present if any(p.match(g) for g in OWN_FILES)]
    if all(p.name == ".lock" for p in present):
        return
    if not overwrite:
        raise FileExistsError(f"--out {out}: not empty ({len(present) - 1} entries, e.g. "
                              f"{min(p.name for p in present if p.name != '.lock')}); "
                              "prepare writes into a new folder: choose another --out, or pass --overwrite "
                              "to replace an earlier prepare's output there")
    foreign = [p.name for p in present if p not in own]
    if foreign:
        raise FileExistsError(f"--out {out}: --overwrite replaces only an earlier prepare's files, and it "
                              f"also holds {', '.join(sorted(foreign)[:5])}: choose another --out")
    for p in own:
        if p.name != ".lock":
            p.unlink()


def prepare(cfg: PrepareConfig) -> dict:
    """Write shards + meta.json + the tokenizer into `cfg.out`; returns the meta."""
    out = Path(cfg.out)
    tok_file = cfg.tokenizer.split(":", 1)[1] if cfg.tokenizer.startswith(("bpe:", "gpt2:")) else None
    check_out(out, {"--input": cfg.source, "--tokenizer": tok_file})
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out}: exists and is not a folder")
    with folder_lock(out):  # two prepares into one folder: the second is refused, not interleaved
        claim_folder(out, cfg.overwrite)
        try:
            return _prepare(cfg, out)
        except BaseException:  # a failed prepare leaves the folder empty, so the retry is not refused
            for p in out.iterdir():
                if p.name != ".lock" and any(p.match(g) for g in OWN_FILES):
                    p.unlink()
            raise


def _prepare(cfg: PrepareConfig, out: Path) -> dict:
    if cfg.tokenizer == "bpe":
        tok: Tokenizer = train_bpe(itertools.islice(_texts(cfg), cfg.bpe_train_docs), cfg.bpe_vocab_size,
                                   out / "tokenizer.json")
    else:
        tok = load_tokenizer(cfg.tokenizer)
    if tok.vocab_size > MAX_VOCAB:
        raise ValueError(f"vocab_size {tok.vocab_size} does not fit uint16 shards")
    tok.save(out)
    train = ShardWriter(out, "train", cfg.shard_tokens, tok.vocab_size)
    val = ShardWriter(out, "val", cfg.max_val_tokens, tok.vocab_size)
    docs, t0 = 0, time.time()
    first = None  # document 0 (a validation document) is held until a second one shows it is not the only one
    with progress(desc="tokenizing", unit="doc") as bar, _encoder_pool(cfg, tok) as encode:
        for arrays in encode(_chunks(_texts(cfg), cfg.chunk_docs)):
            for arr in arrays:
                is_val = docs % cfg.val_every == 0 and val.total + val.fill + arr.size <= cfg.max_val_tokens
                if docs == 0 and is_val:
                    first = arr
                else:
                    if first is not None:
                        val.add(first)
                        first = None
                    (val if is_val else train).add(arr)
                docs += 1
            tokens = train.total + train.fill + val.total + val.fill
            bar.update(len(arrays))
            bar.set_postfix(tokens=f"{tokens:,}", tok_per_s=f"{tokens / max(time.time() - t0, 1e-9):,.0f}")
            if cfg.max_tokens and train.total + train.fill >= cfg.max_tokens:
                break
    if first is not None:  # a one-document corpus: it trains (there is no validation split to make)
        print("note: one document only: it goes to training, and there is no validation shard",
              file=sys.stderr)
        train.add(first)
    meta = dict(source=cfg.source, tokenizer=tok.spec if cfg.tokenizer != "bpe" else "bpe:tokenizer.json",
                vocab_size=tok.vocab_size, eot_id=tok.eot_id, documents=docs,
                train_shards=[p.name for p in train.close()], val_shards=[p.name for p in val.close()],
                train_tokens=train.total, val_tokens=val.total, seconds=round(time.time() - t0, 2))
    if not meta["train_shards"]:
        raise ValueError(f"{cfg.source}: no training tokens were produced (are the files empty?)")
    atomic_write_json(out / "meta.json", meta)
    return meta


class _encoder_pool:
    """Context manager yielding an ordered `map` over chunks: worker processes, or inline for workers <= 1."""

    def __init__(self, cfg: PrepareConfig, tok: Tokenizer):
        self.cfg, self.tok, self.pool = cfg, tok, None

    def __enter__(self):
        if self.cfg.workers <= 1:
            global _worker_tok
            _worker_tok = self.tok
            return lambda chunks: map(_encode_chunk, chunks)
        self.pool = mp.get_context("spawn").Pool(self.cfg.workers, _init_worker, (self.tok.spec,))
        return self._map

    def _map(self, chunks: Iterator[list[str]]) -> Iterator[list[np.ndarray]]:
        # Pool.imap would drain a streaming source into memory; feed it a bounded window at a time.
        for window in _chunks(chunks, 4 * self.cfg.workers):
            yield from self.pool.imap(_encode_chunk, window)

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()
