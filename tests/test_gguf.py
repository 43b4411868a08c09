"""`llmrecipe export --gguf`: the file read back with ggml's own reader (no llama.cpp needed): every tensor
equal to ours (f32 exactly, f16 and q8_0 within their rounding), the hyperparameters, a vocabulary and
merges that tokenize real text to our ids (BPE run from the file alone), the chat template. Where
`llama_cpp` is importable, llama.cpp itself loads the file and continues prompts as our engine does."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmrecipe.checkpoint import load_model
from llmrecipe.cli import main
from llmrecipe.export import CHAT_TEMPLATE, _bytes_to_unicode

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def gpt2_model(data_dir, tmp_path_factory):
    """A small GPT-2-shaped model with GPT-2's own tokenizer (50,257 tokens, 50,000 merges)."""
    import os

    from llmrecipe.checkpoint import save_model
    from llmrecipe.model import GPT, GPTConfig
    from llmrecipe.tokenizer import GPT2Tokenizer

    os.environ.setdefault("LLMRECIPE_GPT2_RANKS", str(data_dir / "tokenizer" / "r50k_base.tiktoken"))
    out = tmp_path_factory.mktemp("gpt2_gguf") / "model"
    torch.manual_seed(0)
    save_model(out, GPT(GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=128)),
               GPT2Tokenizer(str(data_dir / "tokenizer" / "r50k_base.tiktoken")))
    return out


@pytest.fixture(scope="module")
def files(tiny_base, gpt2_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    made = {}
    for kind in ("f32", "f16", "q8_0"):
        main(["export", "--model", str(tiny_base), "--out", str(out / f"tiny_{kind}"), "--gguf-only",
              "--gguf-type", kind])
        made[kind] = next((out / f"tiny_{kind}").glob("*.gguf"))
    main(["export", "--model", str(gpt2_model), "--out", str(out / "gpt2"), "--gguf-only"])
    made["gpt2"] = out / "gpt2" / "model.gguf"
    return made


def _field(reader, key):
    f = reader.fields[key]
    if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode() for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[-1]).decode()
    return f.parts[-1].tolist()[0]


def _ours(model_dir) -> tuple[dict[str, np.ndarray], object, object]:
    from llmrecipe.gguf_file import gguf_name

    model, tok = load_model(model_dir)
    sd = {gguf_name(k): v.float().numpy() for k, v in model.state_dict().items() if gguf_name(k)}
    sd["token_embd.weight"] = sd["token_embd.weight"][: model.config.vocab_size]
    return sd, model, tok


@pytest.mark.parametrize("kind", ["f32", "f16", "q8_0"])
def test_every_tensor_reads_back_as_ours(files, tiny_base, kind):
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(files[kind])
    ours, model, _ = _ours(tiny_base)
    assert {t.name for t in reader.tensors} == set(ours)  # the tied head is not written twice
    for t in reader.tensors:
        want = ours[t.name]
        got = dequantize(t.data, t.tensor_type).reshape(want.shape)
        if kind == "f32" or want.ndim == 1:  # and 1-D tensors (norms, biases) stay f32 in every type
            assert t.tensor_type == gguf.GGMLQuantizationType.F32 and np.array_equal(got, want), t.name
        elif kind == "f16":
            assert np.array_equal(got, want.astype(np.float16).astype(np.float32)), t.name
        else:  # q8_0: blocks of 32 scaled by d = max|x| / 127 stored in f16, values rounded to integers:
            # off by at most d/2 + 127 · d · 2^-11 (the scale's own f16 rounding)
            blocks = want.reshape(-1, 32)
            step = np.abs(blocks).max(1, keepdims=True) / 127
            assert np.all(np.abs(got.reshape(-1, 32) - blocks) <= (0.5 + 127 * 2**-11) * step + 1e-7), t.name
    cfg = model.config
    assert _field(reader, "general.architecture") == "gpt2"
    assert [_field(reader, f"gpt2.{k}") for k in ("context_length", "embedding_length", "block_count",
                                                   "attention.head_count", "feed_forward_length")] == \
        [cfg.block_size, cfg.n_embd, cfg.n_layer, cfg.n_head, 4 * cfg.n_embd]
    assert _field(reader, "gpt2.attention.layer_norm_epsilon") == pytest.approx(1e-5)


def _bpe_from_file(reader):
    """GPT-2's BPE run from the GGUF's tokens and merges alone (what llama.cpp's `gpt-2` tokenizer does)."""
    import regex

    tokens, merges = _field(reader, "tokenizer.ggml.tokens"), _field(reader, "tokenizer.ggml.merges")
    ids = {t: i for i, t in enumerate(tokens)}
    ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
    b2u = _bytes_to_unicode()
    pattern = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

    def encode(text: str) -> list[int]:
        out = []
        for word in pattern.findall(text):
            parts = [b2u[b] for b in word.encode()]
            while len(parts) > 1:
                best = min(range(len(parts) - 1), key=lambda i: ranks.get((parts[i], parts[i + 1]), 1e18))
                if (parts[best], parts[best + 1]) not in ranks:
                    break
                parts[best:best + 2] = [parts[best] + parts[best + 1]]
            out += [ids[p] for p in parts]
        return out
    return encode, tokens


@pytest.mark.parametrize("which", ["f32", "gpt2"])
def test_the_files_tokenizer_gives_our_ids_and_template(files, tiny_base, gpt2_model, data_dir, which):
    reader = gguf.GGUFReader(files[which])
    _, _, tok = _ours(tiny_base if which == "f32" else gpt2_model)
    encode, tokens = _bpe_from_file(reader)
    assert len(tokens) == tok.vocab_size and tokens[tok.eot_id] == "<|endoftext|>"
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    for key in ("bos", "eos", "padding"):
        assert _field(reader, f"tokenizer.ggml.{key}_token_id") == tok.eot_id
    assert _field(reader, "tokenizer.chat_template") == CHAT_TEMPLATE
    rows = [json.loads(x) for x in (data_dir / "pretrain" / "fineweb_edu_sample10BT_150.jsonl").open()]
    u2b = {u: b for b, u in _bytes_to_unicode().items()}
    for text in [r["text"][:1500] for r in rows[:25]] + ["naïve café 日本語 🙂  two  spaces\n\ttab"]:
        ids = tok.encode(text)
        assert encode(text) == ids, text[:80]
        assert bytes(u2b[c] for i in ids for c in tokens[i]).decode() == text  # tokens are our bytes


def test_llama_cpp_continues_as_our_engine(files, tiny_base):
    """llama.cpp itself (the llama-cpp-python build bench/gguf_parity.py makes) on the f32 file: greedy
    continuations equal our engine's, but for near-ties (bench/gguf_parity.py measures them)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp's Python binding is not installed here; "
                                    "bench/gguf_parity.py builds it")
    from llmrecipe.engine import Engine
    from llmrecipe.runtime import setup

    model, tok = load_model(tiny_base)
    engine = Engine(model, tok, setup("cpu"), batch_size=1)
    llm = llama_cpp.Llama(model_path=str(files["f32"]), n_ctx=model.config.block_size, verbose=False,
                          n_threads=2)
    same = 0
    prompts = ["The history of", "In 1998, scientists", "Education is", "Water", "A student"]
    for p in prompts:
        ours = engine.generate([tok.encode(p)], 16, temperature=0.0)[0]
        theirs = []
        for t in llm.generate(tok.encode(p), temp=0.0, top_k=1, reset=True):
            if t == tok.eot_id or len(theirs) == 16:
                break
            theirs.append(t)
        same += theirs == ours
    assert same >= len(prompts) - 1, same
