"""`llmrecipe export --gguf`: the model as one GGUF file, for llama.cpp and the tools built on it (Ollama,
LM Studio, llamafile).

Written with `gguf`, ggml's own Python library: llama.cpp's `gpt2` architecture (learned positions,
LayerNorm with biases, fused QKV, a GELU MLP, the head tied to the embeddings), the tokenizer as GPT-2's
byte-level BPE (its tokens in GPT-2's byte-to-unicode alphabet, the merges, the `gpt-2` pre-tokenizer, the
end-of-text id as BOS, EOS and padding) and our chat template in `tokenizer.chat_template`, so llama.cpp's
chat mode and Ollama format turns as we do. The padded vocabulary rows are cut. f32 keeps every weight
exactly; f16 and q8_0 store the matrices in those types (norms and biases stay f32, as llama.cpp's own
converter keeps 1-D tensors).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .model import GPT
from .tokenizer import Tokenizer

TYPES = ("f32", "f16", "q8_0")
# our parameter name → llama.cpp's gpt2 tensor (per block: {i})
NAMES = {"transformer.wte.weight": "token_embd.weight", "transformer.wpe.weight": "position_embd.weight",
         "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias",
         "ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
         "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}


def gguf_name(name: str) -> str | None:
    """llama.cpp's name for one of our parameters (None: not written, the tied head)."""
    if name in NAMES:
        return NAMES[name]
    if name.startswith("transformer.h."):
        _, _, i, rest = name.split(".", 3)
        module, kind = rest.rsplit(".", 1)
        return f"blk.{i}.{NAMES[module]}.{kind}"
    return None


def vocab_and_merges(tok: Tokenizer) -> tuple[list[str], list[str]]:
    """The tokens by id (GPT-2's byte-to-unicode strings) and the merges as "left right" lines."""
    from .export import fast_tokenizer

    spec = json.loads(fast_tokenizer(tok).to_str())
    vocab = dict(spec["model"]["vocab"])
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    by_id = {i: t for t, i in vocab.items()}
    missing = [i for i in range(tok.vocab_size) if i not in by_id]
    if missing:
        raise ValueError(f"the tokenizer has no token for id {missing[0]}: cannot write its vocabulary")
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return [by_id[i] for i in range(tok.vocab_size)], merges


def write_gguf(path: str | Path, model: GPT, tok: Tokenizer, kind: str = "f32", name: str = "") -> Path:
    """One .gguf file holding `model` (adapters already merged) and its tokenizer."""
    import gguf

    from .export import CHAT_TEMPLATE

    if kind not in TYPES:
        raise ValueError(f"--gguf-type {kind!r}: one of {', '.join(TYPES)}")
    if not model.config.classic:  # this writer knows llama.cpp's gpt2 graph only: never a wrong file
        raise ValueError("--gguf writes llama.cpp's gpt2 architecture; this model uses the modern switches: "
                         "export the Hugging Face folder (a Llama/Qwen3) and convert it with llama.cpp's "
                         "convert_hf_to_gguf.py")
    cfg, path = model.config, Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_name(name or path.stem)
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(4 * cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    w.add_layer_norm_eps(1e-5)  # torch's LayerNorm default, which the model uses
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind])
    tokens, merges = vocab_and_merges(tok)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # our BPEs split text with GPT-2's pattern (tests/test_gguf.py)
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if i == tok.eot_id else gguf.TokenType.NORMAL
                       for i in range(len(tokens))])
    w.add_token_merges(merges)
    for set_id in (w.add_bos_token_id, w.add_eos_token_id, w.add_pad_token_id):
        set_id(tok.eot_id)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    for key, value in model.state_dict().items():
        target = gguf_name(key)
        if target is None:
            continue
        data = value.detach().float().cpu().numpy()
        if key == "transformer.wte.weight":
            data = data[: cfg.vocab_size]  # the padded rows are never used
        w.add_tensor(target, *_encode(data, kind, gguf))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _encode(data: np.ndarray, kind: str, gguf) -> tuple[np.ndarray, ...]:
    """(array[, raw_shape, raw_dtype]) for GGUFWriter.add_tensor: matrices in `kind`, the rest in f32."""
    if kind == "f32" or data.ndim < 2:
        return (np.ascontiguousarray(data, dtype=np.float32),)
    if kind == "f16":
        return (data.astype(np.float16),)
    qtype = gguf.GGMLQuantizationType.Q8_0
    if data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return (np.ascontiguousarray(data, dtype=np.float32),)  # rows that do not split into blocks of 32
    return gguf.quants.quantize(data, qtype), None, qtype  # the shape: read from the bytes
