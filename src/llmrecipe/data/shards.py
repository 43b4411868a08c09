"""Token shards: a 1 KiB header (magic, version, token count, vocab size) followed by uint16 token ids.

Fixed-size binary shards are what llm.c and nanoGPT train from: memory-mapped, so a 10B-token corpus
costs no RAM, and a corrupt or truncated file is caught from its header before training starts.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_write
from .sources import DataError

MAGIC = 0x4C4C4D52  # "LLMR"
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_VOCAB = 2**16  # uint16 ids


def write_shard(path: str | Path, tokens: np.ndarray, vocab_size: int) -> None:
    if vocab_size > MAX_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} does not fit uint16 shards")
    tokens = np.asarray(tokens)
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise DataError(f"{path}: token id {int(tokens.max())} >= vocab_size {vocab_size}")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:4] = (MAGIC, VERSION, tokens.size, vocab_size)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.astype(np.uint16).tobytes())

    atomic_write(path, write)


def read_header(path: str | Path) -> tuple[int, int]:
    """(token count, vocab size) of a shard, after checking magic, version and file size."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise DataError(f"{path}: corrupt shard header (file is {len(raw)} bytes, header needs "
                        f"{HEADER_BYTES})")
    header = np.frombuffer(raw, dtype=np.int32)
    if header[0] != MAGIC:
        raise DataError(f"{path}: corrupt shard header (bad magic {int(header[0]):#x}, expected {MAGIC:#x})")
    if header[1] != VERSION:
        raise DataError(f"{path}: unsupported shard version {int(header[1])} (expected {VERSION})")
    n, vocab = int(header[2]), int(header[3])
    expected = HEADER_BYTES + 2 * n
    if path.stat().st_size != expected:
        raise DataError(f"{path}: corrupt shard (header says {n} tokens = {expected} bytes, file has "
                        f"{path.stat().st_size})")
    return n, vocab


def read_shard(path: str | Path) -> np.memmap:
    n, _ = read_header(path)
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES, shape=(n,))


class ShardWriter:
    """Buffers a token stream and writes it as `{prefix}_{k:06d}.bin` shards of exactly `shard_tokens`."""

    def __init__(self, out_dir: str | Path, prefix: str, shard_tokens: int, vocab_size: int):
        self.out_dir, self.prefix = Path(out_dir), prefix
        self.shard_tokens, self.vocab_size = shard_tokens, vocab_size
        self.buf = np.empty(shard_tokens, dtype=np.uint16)
        self.fill = 0
        self.paths: list[Path] = []
        self.total = 0

    def add(self, tokens: np.ndarray) -> None:
        while tokens.size:
            take = min(tokens.size, self.shard_tokens - self.fill)
            self.buf[self.fill:self.fill + take] = tokens[:take]
            self.fill += take
            tokens = tokens[take:]
            if self.fill == self.shard_tokens:
                self._flush()

    def _flush(self) -> None:
        path = self.out_dir / f"{self.prefix}_{len(self.paths):06d}.bin"
        write_shard(path, self.buf[: self.fill], self.vocab_size)
        self.paths.append(path)
        self.total += self.fill
        self.fill = 0

    def close(self) -> list[Path]:
        if self.fill:
            self._flush()
        return self.paths
