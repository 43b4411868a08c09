"""Tokenizers: GPT-2 BPE through tiktoken, or a small byte-level BPE for CPU-sized runs.

A tokenizer is named by a *spec* string, recorded in every shard folder and run:
  "gpt2"                    tiktoken's GPT-2 encoding (downloads once, or reads $TIKTOKEN_CACHE_DIR offline;
                            a folder also records the ranks file it was made with, reused while it exists)
  "gpt2:PATH.tiktoken"      the same ranks from a local r50k_base.tiktoken file (fully offline)
  "bpe:PATH/tokenizer.json" a byte-level BPE trained by `train_bpe` (HF `tokenizers` format)
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from .files import atomic_write_text

EOT = "<|endoftext|>"
# optional path to r50k_base.tiktoken, used when the spec is plain "gpt2"
GPT2_RANKS_ENV = "LLMRECIPE_GPT2_RANKS"


class Tokenizer:
    """The interface every stage uses: encode/decode text, the end-of-text id, the vocabulary size."""

    spec: str
    vocab_size: int
    eot_id: int
    ranks_file: str | None = None  # GPT-2's: the local ranks file it was read from, if any

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        """Record the tokenizer in a run/shard folder so it can be reloaded with `load_from_dir`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        record = {"spec": self.spec, "vocab_size": self.vocab_size, "eot_id": self.eot_id}
        if self.ranks_file:
            record["ranks"] = self.ranks_file
        atomic_write_text(directory / "tokenizer_spec.json", json.dumps(record))


class GPT2Tokenizer(Tokenizer):
    def __init__(self, ranks_file: str | None = None):
        import tiktoken

        ranks_file = ranks_file or os.environ.get(GPT2_RANKS_ENV)
        if ranks_file:
            from tiktoken.load import load_tiktoken_bpe
            from tiktoken_ext.openai_public import r50k_pat_str

            if not Path(ranks_file).is_file():
                raise FileNotFoundError(f"GPT-2 ranks file not found: {ranks_file}")
            self.enc = tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str,
                                         mergeable_ranks=load_tiktoken_bpe(ranks_file),
                                         special_tokens={EOT: 50256}, explicit_n_vocab=50257)
        else:
            try:
                self.enc = tiktoken.get_encoding("gpt2")
            except Exception as e:  # tiktoken downloads the ranks once: offline, that is a requests error
                raise ValueError(
                    f"the gpt2 tokenizer's ranks could not be loaded ({type(e).__name__}): tiktoken "
                    f"downloads them once into $TIKTOKEN_CACHE_DIR; offline, point ${GPT2_RANKS_ENV} at a "
                    "copy of r50k_base.tiktoken (e.g. shared/data/tokenizer/), or train one: --tokenizer bpe"
                ) from None
        self.spec = "gpt2"  # the ranks are identical either way; where they came from is a machine setting
        # ...recorded beside the spec only as a hint: an offline machine reloads from it while it exists
        self.ranks_file = str(Path(ranks_file).resolve()) if ranks_file else None
        self.vocab_size = self.enc.n_vocab
        self.eot_id = self.enc.eot_token

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=1)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids))


class BPETokenizer(Tokenizer):
    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as HFTokenizer

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such tokenizer file")
        try:
            self.tok = HFTokenizer.from_file(str(self.path))
        except Exception as e:  # the Rust library raises a bare Exception: name the file instead
            raise ValueError(f"{self.path}: not a `tokenizers` JSON file ({e})") from None
        # Text is text: a literal "<|endoftext|>" typed by a user (or found in a document) is encoded as its
        # characters, never as the end-of-turn token, or anyone could forge a chat turn. tiktoken's
        # encode_ordinary does the same for GPT-2; the real EOT is only ever appended by id.
        self.tok.encode_special_tokens = True
        self.spec = f"bpe:{self.path}"
        self.vocab_size = self.tok.get_vocab_size()
        eot = self.tok.token_to_id(EOT)
        if eot is None:
            raise ValueError(f"{self.path}: tokenizer has no {EOT} token")
        self.eot_id = eot

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / "tokenizer.json"
        if self.path.resolve() != target.resolve():
            shutil.copyfile(self.path, target)
        self.path, self.spec = target, f"bpe:{target}"
        atomic_write_text(directory / "tokenizer_spec.json",
                           json.dumps({"spec": "bpe:tokenizer.json", "vocab_size": self.vocab_size,
                                       "eot_id": self.eot_id}))


def load_tokenizer(spec: str) -> Tokenizer:
    if spec == "gpt2":
        return GPT2Tokenizer()
    if spec.startswith("gpt2:"):
        return GPT2Tokenizer(spec[len("gpt2:"):])
    if spec.startswith("bpe:"):
        return BPETokenizer(spec[len("bpe:"):])
    raise ValueError(f"unknown tokenizer spec {spec!r}: expected 'gpt2', 'gpt2:FILE.tiktoken' or "
                     "'bpe:FILE.json'")


def load_from_dir(directory: str | Path) -> Tokenizer:
    """Reload the tokenizer recorded by `Tokenizer.save` (relative bpe paths resolve inside `directory`)."""
    meta_path = Path(directory) / "tokenizer_spec.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no tokenizer recorded in {directory}")
    meta = json.loads(meta_path.read_text())
    spec = meta["spec"]
    hint = meta.get("ranks")
    if spec == "gpt2" and not os.environ.get(GPT2_RANKS_ENV) and hint and Path(hint).is_file():
        spec = f"gpt2:{hint}"
    if spec.startswith("bpe:") and not Path(spec[4:]).is_absolute():
        spec = f"bpe:{Path(directory) / spec[4:]}"
    return load_tokenizer(spec)


def train_bpe(texts: Iterator[str], vocab_size: int, out_file: str | Path) -> BPETokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenisation) with EOT as its only special token."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_file))
    return BPETokenizer(out_file)

