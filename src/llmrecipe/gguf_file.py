"""`llmrecipe export --gguf`: the model as one GGUF file, for llama.cpp and the tools built on it (Ollama,
LM Studio, llamafile).

Written with `gguf`, ggml's own Python library: llama.cpp's `gpt2` architecture for GPT-2 (learned
positions, LayerNorm with biases, fused QKV, a GELU MLP, the head tied to the embeddings), its `qwen3` or
`llama` architecture for the modern switches (the same tensors as the Hugging Face export, split q/k/v and
gate/up; llama.cpp's `llama` rotates adjacent pairs, so its q and k rows are reordered), the tokenizer as
GPT-2's
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


# Hugging Face Llama/Qwen3 name (model.to_llama_state_dict) → llama.cpp's
HF_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
            "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
            "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
            "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
            "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
            "mlp.down_proj": "ffn_down"}


def interleave_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """q/k rows from the rotate-half layout (dimension i pairs with i + d/2) to the adjacent-pairs layout
    (2i with 2i + 1) that llama.cpp's `llama` architecture rotates: per head, row i goes to 2i and row
    i + d/2 to 2i + 1."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: GPT) -> tuple[str, dict[str, np.ndarray]]:
    """llama.cpp's architecture for `model` and its tensors by llama.cpp's names (fp32, padded rows cut)."""
    from .model import stock_architecture, to_llama_state_dict

    cfg = model.config
    arch = {"GPT2LMHeadModel": "gpt2", "Qwen3ForCausalLM": "qwen3",
            "LlamaForCausalLM": "llama"}[stock_architecture(cfg)]  # a clear error for ReLU² / soft-cap
    if arch == "gpt2":
        out = {gguf_name(k): v for k, v in model.state_dict().items() if gguf_name(k)}
        out["token_embd.weight"] = out["token_embd.weight"][: cfg.vocab_size]
    else:
        out = {}
        for k, v in to_llama_state_dict(model).items():
            module, kind = k.rsplit(".", 1)
            if module.startswith("model.layers."):
                _, _, i, rest = module.split(".", 3)
                out[f"blk.{i}.{HF_NAMES[rest]}.{kind}"] = v
            else:
                out[f"{HF_NAMES[module]}.{kind}"] = v
    tensors = {k: v.detach().float().cpu().numpy() for k, v in out.items()}
    if arch == "llama":
        for k in tensors:
            if k.endswith((".attn_q.weight", ".attn_k.weight")):
                tensors[k] = interleave_rope_rows(tensors[k], cfg.n_head)
    return arch, tensors


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
    arch, tensors = gguf_tensors(model)
    cfg, path = model.config, Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name or path.stem)
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(cfg.hidden_mlp)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    if arch == "gpt2":
        w.add_layer_norm_eps(cfg.norm_eps)
    else:
        head = cfg.n_embd // cfg.n_head
        w.add_head_count_kv(cfg.n_head)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_rope_dimension_count(head)
        w.add_key_length(head)
        w.add_value_length(head)
        w.add_vocab_size(cfg.vocab_size)
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
    for target, data in tensors.items():
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
