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


def _llama_cpp():
    """llama.cpp's Python binding: installed, or the build bench/gguf_parity.py leaves in its cache."""
    import os
    import sys
    from pathlib import Path

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmrecipe" / "llama-cpp-python"
    if (cache / "llama_cpp").is_dir() and str(cache) not in sys.path:
        sys.path.append(str(cache))
    return pytest.importorskip("llama_cpp", reason="llama.cpp's Python binding is not installed here; "
                               "bench/gguf_parity.py builds it")


def test_llama_cpp_continues_as_our_engine(files, tiny_base):
    """llama.cpp itself (the llama-cpp-python build bench/gguf_parity.py makes) on the f32 file: greedy
    continuations equal our engine's, but for near-ties (bench/gguf_parity.py measures them)."""
    llama_cpp = _llama_cpp()
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


# ---- the modern switches: llama.cpp's qwen3 (QK-norm) and llama architectures ----
MODERN = dict(position="rope", norm="rmsnorm", norm_eps=1e-6, qk_norm=True, mlp="swiglu", mlp_hidden=160,
              bias=False, tie_embeddings=False, rope_theta=500.0)


@pytest.fixture(scope="module")
def modern_files(tiny_base, tmp_path_factory):
    """A random Qwen3-like and Llama-like model on the tiny tokenizer (norms away from 1 and weights scaled
    up, so a misplaced tensor shows and greedy choices are not near-ties), exported with --gguf-only."""
    from llmrecipe.checkpoint import save_model
    from llmrecipe.model import GPT, GPTConfig

    _, tok = load_model(tiny_base)
    out = tmp_path_factory.mktemp("modern_gguf")
    made = {}
    llama = {**MODERN, "qk_norm": False, "tie_embeddings": True}
    for arch, switches in (("qwen3", MODERN), ("llama", llama)):
        torch.manual_seed(1)
        model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=tok.vocab_size, block_size=128,
                              **switches))
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(1.0 + 0.3 * torch.randn_like(p) if p.dim() == 1 else 2.5 * p)
        save_model(out / arch, model, tok)
        main(["export", "--model", str(out / arch), "--out", str(out / f"{arch}_gguf"), "--gguf-only"])
        made[arch] = (out / arch, out / f"{arch}_gguf" / "model.gguf")
    return made


def _expected_modern(model) -> dict[str, np.ndarray]:
    """Our weights under llama.cpp's names, derived here from our own parameters (not the writer's map)."""
    cfg, sd = model.config, {k: v.float().numpy() for k, v in model.state_dict().items()}
    C, H, V, d = cfg.n_embd, cfg.hidden_mlp, cfg.vocab_size, cfg.n_embd // cfg.n_head
    # llama.cpp's `llama` rotates pairs (2i, 2i+1); ours pairs i with i + d/2 within each head
    order = np.array([h * d + (j // 2 if j % 2 == 0 else d // 2 + j // 2)
                      for h in range(cfg.n_head) for j in range(d)])
    out = {"token_embd.weight": sd["transformer.wte.weight"][:V],
           "output_norm.weight": sd["transformer.ln_f.weight"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"][:V]
    for i in range(cfg.n_layer):
        b, o = f"transformer.h.{i}.", f"blk.{i}."
        qkv, fc = sd[b + "attn.c_attn.weight"], sd[b + "mlp.c_fc.weight"]
        q, k = qkv[:C], qkv[C:2 * C]
        if not cfg.qk_norm:
            q, k = q[order], k[order]
        out.update({o + "attn_norm.weight": sd[b + "ln_1.weight"],
                    o + "ffn_norm.weight": sd[b + "ln_2.weight"],
                    o + "attn_q.weight": q, o + "attn_k.weight": k, o + "attn_v.weight": qkv[2 * C:],
                    o + "attn_output.weight": sd[b + "attn.c_proj.weight"], o + "ffn_gate.weight": fc[:H],
                    o + "ffn_up.weight": fc[H:], o + "ffn_down.weight": sd[b + "mlp.c_proj.weight"]})
        if cfg.qk_norm:
            out[o + "attn_q_norm.weight"] = sd[b + "attn.q_norm.weight"]
            out[o + "attn_k_norm.weight"] = sd[b + "attn.k_norm.weight"]
    return out


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_a_modern_model_writes_as_llama_cpps_own_architecture(modern_files, arch):
    folder, path = modern_files[arch]
    model, _ = load_model(folder)
    reader = gguf.GGUFReader(path)
    want = _expected_modern(model)
    assert {t.name for t in reader.tensors} == set(want)
    for t in reader.tensors:
        got = np.asarray(t.data).reshape(want[t.name].shape)
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and np.array_equal(got, want[t.name]), t.name
    cfg = model.config
    assert _field(reader, "general.architecture") == arch
    keys = ("context_length", "embedding_length", "block_count", "feed_forward_length",
            "attention.head_count", "attention.head_count_kv", "rope.dimension_count")
    assert [_field(reader, f"{arch}.{k}") for k in keys] == \
        [cfg.block_size, cfg.n_embd, cfg.n_layer, cfg.hidden_mlp, cfg.n_head, cfg.n_head,
         cfg.n_embd // cfg.n_head]
    assert _field(reader, f"{arch}.rope.freq_base") == pytest.approx(cfg.rope_theta)
    assert _field(reader, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.norm_eps)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_llama_cpp_runs_a_modern_model_as_our_engine(modern_files, arch):
    """llama.cpp's own qwen3 / llama graph on the file: the logits of every position of 20 prompts within
    fp32 tolerance of ours, and the greedy continuations the same tokens."""
    llama_cpp = _llama_cpp()
    from llmrecipe.engine import Engine
    from llmrecipe.runtime import setup

    folder, path = modern_files[arch]
    model, tok = load_model(folder)
    model.eval()
    engine = Engine(model, tok, setup("cpu"), batch_size=1)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=model.config.block_size, verbose=False, n_threads=2,
                          logits_all=True, type_k=0, type_v=0)  # GGML_TYPE_F32: no f16 KV cache
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, tok.vocab_size, (int(n),), generator=g).tolist()
               for n in torch.randint(3, 40, (20,), generator=g)]
    worst, same = 0.0, 0
    for p in prompts:
        llm.reset()
        llm.eval(p)
        theirs = np.array(llm.scores[: len(p)])
        with torch.no_grad():
            ours = model(torch.tensor([p]))[0][0].numpy()
        scale = np.abs(ours).max()
        worst = max(worst, float(np.abs(theirs - ours).max() / scale))
        mine = engine.generate([p], 12, temperature=0.0)[0]
        gen = []
        for t in llm.generate(p, temp=0.0, top_k=1, reset=True):
            if t == tok.eot_id or len(gen) == 12:
                break
            gen.append(t)
        # llama.cpp stops at end-of-text, which our engine returns as a token or stops before
        ended = len(gen) == 12 or mine[len(gen):len(gen) + 1] in ([], [tok.eot_id])
        same += gen == mine[: len(gen)] and ended
    # ggml's f32 kernels sum in another order: fp32 rounding only (f32 KV cache)
    print(f"{arch}: max |Δ logit| / max |logit| = {worst:.2e}")
    assert worst < 1e-5, worst
    assert same == len(prompts), same
