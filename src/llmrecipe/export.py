"""`llmrecipe export`: a model (or adapter chain) as a complete Hugging Face folder.

What `transformers`, lm-evaluation-harness (`--model hf`), vLLM, TGI or llama.cpp's converter need, and
nothing they would have to be told separately:
- `model.safetensors` + `config.json`: a `GPT2LMHeadModel` (a `LlamaForCausalLM` or `Qwen3ForCausalLM` for
  the modern switches), adapters merged, the padded vocabulary rows cut;
- `tokenizer.json` + `tokenizer_config.json`: the model's own tokenizer as a fast tokenizer. The tiny presets'
  byte-level BPE *is* a `tokenizers` file; GPT-2's is rebuilt from the tiktoken ranks (vocab + merges, the
  GPT-2 byte-to-unicode alphabet, the GPT-2 pre-tokenizer regex), so `AutoTokenizer` gives our ids;
- `chat_template`: our one chat format as Jinja (`<|role|>\\n{content}<|endoftext|>` per turn, leading
  whitespace of a content dropped on both sides, the assistant marker as the generation prompt).
  `apply_chat_template` tokenises the rendered string as a whole and gives our ids (we tokenise marker and
  content separately): GPT-2's pre-tokenizer never joins the marker's final "\\n" to a letter, digit or
  symbol, and `<|endoftext|>` is a special token on both sides (tested on the real chat sample);
- `generation_config.json`: the end-of-turn token as EOS and padding, greedy by default.
"""
from __future__ import annotations

from pathlib import Path

from .model import GPT
from .tokenizer import EOT, BPETokenizer, GPT2Tokenizer, Tokenizer

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role ' + message['role'] + ' (expected system, user or assistant)') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'].lstrip() + '" + EOT + "' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (the alphabet of vocab.json and merges.txt):
    printable Latin-1 bytes stand for themselves, the other 68 bytes for code points from 256 up."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _merge_parts(ranks: dict[bytes, int], token: bytes) -> tuple[bytes, bytes]:
    """The two tokens BPE merged last to make `token`: run the merges of lower rank until two parts remain."""
    parts = [bytes([b]) for b in token]
    limit = ranks[token]
    while len(parts) > 2:
        best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], limit))
        if ranks.get(parts[best] + parts[best + 1], limit) >= limit:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise ValueError(f"cannot derive the merge that makes token {token!r}")
    return parts[0], parts[1]


def gpt2_fast_tokenizer(tok: GPT2Tokenizer):
    """GPT-2's BPE as a `tokenizers.Tokenizer`, from the tiktoken ranks (same ids for every text)."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    ranks: dict[bytes, int] = tok.enc._mergeable_ranks
    b2u = _bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(b2u[x] for x in b)
    vocab = {text(t): r for t, r in ranks.items()}
    vocab[EOT] = tok.eot_id
    merges = [tuple(text(p) for p in _merge_parts(ranks, t))
              for t, _ in sorted(ranks.items(), key=lambda kv: kv[1]) if len(t) > 1]
    fast = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    fast.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    fast.decoder = decoders.ByteLevel()
    fast.add_special_tokens([AddedToken(EOT, special=True)])
    return fast


def fast_tokenizer(tok: Tokenizer):
    if isinstance(tok, BPETokenizer):
        return tok.tok
    if isinstance(tok, GPT2Tokenizer):
        return gpt2_fast_tokenizer(tok)
    raise ValueError(f"cannot export tokenizer {tok.spec!r}")


def _portable_tokenizer_config(directory: Path) -> None:
    """tokenizer_config.json as every transformers from 4.40 reads it: transformers 5 writes the class as
    "TokenizersBackend" (unknown to 4.x) and the chat template only to chat_template.jinja (which 4.46 does
    not read). PreTrainedTokenizerFast loads tokenizer.json as it is in both; the template goes in too."""
    import json

    path = directory / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=CHAT_TEMPLATE)
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def export_hf(directory: str | Path, model: GPT, tok: Tokenizer) -> Path:
    """Write the complete Hugging Face folder (needs `transformers`)."""
    import transformers

    from .checkpoint import save_hf

    directory = Path(directory)
    transformers.utils.logging.disable_progress_bar()  # its shard-writing bar: \r-redrawn lines in a log
    save_hf(directory, model, eot_id=tok.eot_id)
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=fast_tokenizer(tok), bos_token=EOT, eos_token=EOT, unk_token=EOT, pad_token=EOT,
        model_max_length=model.config.block_size, chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False)
    hf_tok.save_pretrained(str(directory))
    _portable_tokenizer_config(directory)
    gen = transformers.GenerationConfig(bos_token_id=tok.eot_id, eos_token_id=tok.eot_id,
                                        pad_token_id=tok.eot_id, do_sample=False)
    gen.save_pretrained(str(directory))
    return directory
