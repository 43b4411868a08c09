"""Memory-mapped shards → (x, y) batches, deterministic from (seed, sequence number).

The training stream is a seeded permutation (one per epoch) of all T+1-token windows in the shards.
A batch is named by the global sequence numbers it holds, so the loader has no hidden state: the
position saved in a checkpoint is just a count, a resumed run sees exactly the batches it would have,
and W ranks can split each step's sequences between them (rank r takes its own contiguous slice).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..files import read_json
from .order import EpochOrder
from .shards import read_header, read_shard
from .sources import DataError


def shard_paths(directory: Path, split: str) -> list[Path]:
    """The shards meta.json lists (what prepare wrote); a shard it does not list is an error naming it,
    never extra training data (a larger earlier prepare into the same folder left it). Without meta.json
    (shards written by other tools) every `{split}_*.bin` is read."""
    found = sorted(directory.glob(f"{split}_*.bin"))
    if not (directory / "meta.json").is_file():
        return found
    meta = read_json(directory / "meta.json")
    listed = meta.get(f"{split}_shards")
    if not isinstance(listed, list) or not all(isinstance(n, str) and "/" not in n for n in listed):
        raise DataError(f"{directory / 'meta.json'}: field '{split}_shards' must be a list of file names")
    stray = sorted({p.name for p in found} - set(listed))
    if stray:
        raise DataError(f"{directory}: {', '.join(stray[:4])}{' …' if len(stray) > 4 else ''} not listed in "
                        "meta.json (left by another prepare?): remove them, or prepare into a new folder")
    missing = [n for n in listed if not (directory / n).is_file()]
    if missing:
        raise DataError(f"{directory}: meta.json lists {missing[0]}, which is missing: prepare again")
    return [directory / n for n in listed]


class TokenWindows:
    def __init__(self, directory: str | Path, split: str, seq_len: int, seed: int = 0,
                 vocab_size: int | None = None, shuffle: bool = True):
        directory = Path(directory)
        paths = shard_paths(directory, split)
        if not paths:
            raise DataError(f"{directory}: no {split}_*.bin shards (run `llmrecipe prepare` first)")
        for p in paths:
            _, shard_vocab = read_header(p)
            if vocab_size is not None and shard_vocab > vocab_size:
                raise DataError(f"{p}: shard vocabulary {shard_vocab} > model vocab_size {vocab_size} "
                                "(prepared with a different tokenizer?)")
        # memory-mapped (np.memmap): a 10B-token corpus is 20 GB of uint16, opened at once, paged in as read
        self.paths, self.shards = paths, [read_shard(p) for p in paths]
        self.seq_len, self.seed, self.shuffle, self.vocab_size = seq_len, seed, shuffle, vocab_size
        # windows start every T tokens and hold T+1 (inputs, then targets shifted by one): consecutive windows
        # share one token and every token is a target once. A window never spans two shards, so a shard's
        # tail shorter than a window is never read
        counts = [max(0, (len(s) - 1) // seq_len) for s in self.shards]
        self.cum = np.cumsum([0] + counts)
        self.num_windows = int(self.cum[-1])
        if self.num_windows == 0:
            raise DataError(f"{directory}: {split} shards hold fewer than seq_len+1 = {seq_len + 1} tokens")
        self.order = EpochOrder(self.num_windows, seed, shuffle)

    def window(self, k: int) -> np.ndarray:
        """The k-th window of the stream (k may exceed one epoch)."""
        j = self.order[k]
        s = int(np.searchsorted(self.cum, j, side="right") - 1)
        off = (j - int(self.cum[s])) * self.seq_len
        w = np.asarray(self.shards[s][off: off + self.seq_len + 1], dtype=np.int64)
        # checked per window, not per shard up front (that would read the whole corpus at start-up): an
        # out-of-range id would otherwise surface as an opaque index error inside the embedding
        if self.vocab_size is not None and w.max() >= self.vocab_size:
            raise DataError(f"{self.paths[s]}: token id {int(w.max())} >= vocab_size {self.vocab_size} "
                            f"near token {off}")
        return w

    def batch(self, start: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences start..start+batch_size-1 as (x, y) of shape (B, T), y shifted by one."""
        w = torch.from_numpy(np.stack([self.window(start + b) for b in range(batch_size)]))
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()
