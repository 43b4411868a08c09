"""`llmrecipe export`: the Hugging Face folder works with transformers' own Auto classes, token for token."""
import json

import pytest
import torch

from llmrecipe.chat import encode_chat
from llmrecipe.checkpoint import load_model
from llmrecipe.cli import main
from llmrecipe.engine import Engine
from llmrecipe.runtime import setup

transformers = pytest.importorskip("transformers")

EDGE = ["Hello world", " leading space", "  two  spaces\n\n\nthree newlines\tand a tab",
        "naïve café 日本語 🙂",
        "numbers 1234567 and 3.14159", "it's they're we'll I'd", "", "a" * 300, "trailing spaces   "]


def _texts(data_dir) -> list[str]:
    rows = [json.loads(x) for x in (data_dir / "pretrain" / "fineweb_edu_sample10BT_150.jsonl").open()]
    return [r["text"][:2000] for r in rows[:60]] + EDGE


def _conversations(data_dir) -> list[list[dict]]:
    rows = [json.loads(x) for x in (data_dir / "sft" / "ultrachat_200k_sample20.jsonl").open()]
    return [r["messages"] for r in rows] + [[{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "2+2?"},
                                              {"role": "assistant", "content": "4."}]]


def test_gpt2_tokenizer_rebuilt_from_the_ranks_gives_tiktokens_ids(data_dir):
    from llmrecipe.export import gpt2_fast_tokenizer
    from llmrecipe.tokenizer import GPT2Tokenizer

    ours = GPT2Tokenizer(str(data_dir / "tokenizer" / "r50k_base.tiktoken"))
    fast = gpt2_fast_tokenizer(ours)
    assert fast.get_vocab_size() == 50257 and fast.token_to_id("<|endoftext|>") == 50256
    for text in _texts(data_dir):
        ids = ours.encode(text)
        assert fast.encode(text, add_special_tokens=False).ids == ids, text[:80]
        assert fast.decode(ids, skip_special_tokens=False) == text


@pytest.fixture(scope="module")
def exported(tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf"
    main(["export", "--model", str(tiny_base), "--out", str(out)])
    return out


def test_export_folder_loads_with_auto_classes(exported, tiny_base, data_dir):
    names = {p.name for p in exported.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= names, names
    ours_model, ours_tok = load_model(tiny_base)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(exported))
    for text in _texts(data_dir):
        assert hf_tok.encode(text, add_special_tokens=False) == ours_tok.encode(text), text[:80]
    gen = json.loads((exported / "generation_config.json").read_text())
    assert gen["eos_token_id"] == ours_tok.eot_id and gen["pad_token_id"] == ours_tok.eot_id
    assert json.loads((exported / "config.json").read_text())["vocab_size"] == ours_model.config.vocab_size


def test_chat_template_renders_our_chat_format_token_for_token(exported, tiny_base, data_dir):
    """apply_chat_template == encode_chat on every conversation of the real chat sample, with and without the
    generation prompt, and on contents that start with spaces or newlines (dropped on both sides)."""
    _, tok = load_model(tiny_base)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(exported))
    convs = _conversations(data_dir) + [[{"role": "user", "content": "\n\n  Hi"},
                                         {"role": "assistant", "content": "  \tthere"}]]
    checked = 0
    for conv in convs:
        for prompt_only in (False, True):
            msgs = conv[:-1] if prompt_only and conv[-1]["role"] == "assistant" else conv
            ours = encode_chat(msgs, tok, add_generation_prompt=prompt_only).ids
            theirs = hf_tok.apply_chat_template(msgs, add_generation_prompt=prompt_only, tokenize=True)
            assert list(theirs["input_ids"] if hasattr(theirs, "keys") else theirs) == ours
            checked += 1
    assert checked == 2 * len(convs)
    with pytest.raises(Exception, match="unknown chat role"):
        hf_tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_hf_greedy_generation_equals_our_engine(exported, tiny_base):
    model, tok = load_model(tiny_base)
    engine = Engine(model, tok, setup("cpu"), batch_size=1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(exported)).eval()
    for prompt in ["The history of", "In 1998, scientists", "Education is", "Water"]:
        ids = tok.encode(prompt)
        ours = engine.generate([ids], 24, temperature=0.0)[0]
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
        if tok.eot_id in out:
            out = out[: out.index(tok.eot_id)]
        assert out == ours, prompt


# The lowest transformers the `hf` extra allows, installed beside the venv's packages (torch, numpy, …):
# its own transformers, tokenizers and huggingface-hub shadow the newer ones through PYTHONPATH.
LOWEST = ("transformers==4.46.3", "tokenizers==0.20.3", "huggingface-hub==0.26.5")
LOAD = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, __version__
tok, model = AutoTokenizer.from_pretrained(sys.argv[1]), AutoModelForCausalLM.from_pretrained(sys.argv[1])
prompts = json.loads(sys.argv[2])
chat = [{"role": "user", "content": prompts[0]}]
out = {"version": __version__, "encoded": [tok.encode(p, add_special_tokens=False) for p in prompts],
       "chat": tok.apply_chat_template(chat, add_generation_prompt=True),
       "greedy": [model.generate(torch.tensor([tok.encode(p)]), max_new_tokens=16, do_sample=False,
                                 pad_token_id=tok.eos_token_id)[0, len(tok.encode(p)):].tolist()
                  for p in prompts]}
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def lowest_transformers(tmp_path_factory):
    import os
    import subprocess
    import sys
    from pathlib import Path

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmrecipe"
    cache = cache / LOWEST[0]
    if not (cache / "transformers").is_dir():
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                               str(cache), *LOWEST], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot install {LOWEST[0]} from the package index: {done.stderr.strip()[-300:]}")
    return cache


def test_export_loads_and_generates_the_same_on_the_lowest_supported_transformers(exported, tiny_base,
                                                                                  lowest_transformers):
    import os
    import subprocess
    import sys

    model, tok = load_model(tiny_base)
    engine = Engine(model, tok, setup("cpu"), batch_size=1)
    prompts = ["The history of", "In 1998, scientists", "Water"]
    env = {**os.environ, "PYTHONPATH": str(lowest_transformers)}
    done = subprocess.run([sys.executable, "-c", LOAD, str(exported), json.dumps(prompts)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["version"] == LOWEST[0].split("==")[1]
    assert got["encoded"] == [tok.encode(p) for p in prompts]
    assert got["chat"] == encode_chat([{"role": "user", "content": prompts[0]}], tok,
                                      add_generation_prompt=True).ids
    for p, theirs in zip(prompts, got["greedy"]):
        ours = engine.generate([tok.encode(p)], 16, temperature=0.0)[0]
        assert theirs[: len(ours)] == ours and theirs[len(ours):] in ([], [tok.eot_id]), p


def test_config_has_what_llama_cpps_converter_reads_for_gpt2(exported, tiny_base):
    """convert_hf_to_gguf.py's GPT2Model reads n_layer, n_ctx, n_embd, n_head and layer_norm_epsilon from
    config.json (a KeyError on n_ctx stopped every export before)."""
    cfg = json.loads((exported / "config.json").read_text())
    model, _ = load_model(tiny_base)
    assert cfg["architectures"] == ["GPT2LMHeadModel"]
    assert [cfg[k] for k in ("n_layer", "n_ctx", "n_embd", "n_head")] == \
        [model.config.n_layer, model.config.block_size, model.config.n_embd, model.config.n_head]
    assert cfg["n_positions"] == cfg["n_ctx"] and cfg["layer_norm_epsilon"] == pytest.approx(1e-5)
