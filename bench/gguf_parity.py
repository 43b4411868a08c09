"""llama.cpp against our engine on the same weights: `llmrecipe export --gguf`, then llama.cpp (through the
llama-cpp-python binding, built once from its source distribution into a cache folder, CPU) beside our
engine on each model:

- greedy continuations of prompts (from the world's held-out questions for chat models, text otherwise):
  how many agree token for token, and for those that do not, the logit gap of the first differing step;
- next-token agreement over real text: argmax of both at every position of a few documents;
- the largest |logit difference| seen;
- tokens/s of greedy decoding, both (one thread each side's own way: the numbers name the machine).

    python bench/gguf_parity.py --run runs/demo [--gpt2 ../shared/data] [--out gguf.md]

The first call builds llama.cpp (several minutes on 2 cores; `pip install llama-cpp-python` into
~/.cache/llmrecipe/llama-cpp-python); later calls reuse it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from llmrecipe.chat import encode_chat  # noqa: E402
from llmrecipe.checkpoint import load_model  # noqa: E402
from llmrecipe.engine import Engine  # noqa: E402
from llmrecipe.gguf_file import write_gguf  # noqa: E402
from llmrecipe.runtime import setup  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmrecipe" / "llama-cpp-python"
VERSION = "0.3.36"


def llama_cpp():
    """The binding, built into CACHE on first use."""
    if not (CACHE / "llama_cpp").is_dir():
        print(f"building llama.cpp (llama-cpp-python {VERSION}, CPU) into {CACHE} …", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(CACHE),
                        f"llama-cpp-python=={VERSION}", "diskcache"], check=True)
    sys.path.insert(0, str(CACHE))
    import llama_cpp as lc

    return lc


def cpu_name() -> str:
    try:
        return next(x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                    if x.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def compare(lc, folder: Path, prompts: list[list[int]], texts: list[str], work: Path, new: int = 24,
            kv: str = "f16") -> dict:
    model, tok = load_model(folder)
    model.eval()
    path = write_gguf(work / f"{folder.name}.gguf", model, tok)
    engine = Engine(model, tok, setup("cpu"), batch_size=1)
    block = model.config.block_size
    kv_type = {"f32": 0, "f16": 1}[kv]  # GGML_TYPE_F32 / F16: llama.cpp's default cache rounds K and V
    llm = lc.Llama(model_path=str(path), n_ctx=block, logits_all=True, verbose=False,
                   n_threads=os.cpu_count(), type_k=kv_type, type_v=kv_type)
    same, gaps, t_ours, t_theirs, n_ours, n_theirs = 0, [], 0.0, 0.0, 0, 0
    for ids in prompts:
        t0 = time.time()
        ours = engine.generate([ids], new, temperature=0.0)[0]
        t_ours, n_ours = t_ours + time.time() - t0, n_ours + len(ours)
        t0 = time.time()
        theirs = []
        for t in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            if t == tok.eot_id or len(theirs) == new:
                break
            theirs.append(t)
        t_theirs, n_theirs = t_theirs + time.time() - t0, n_theirs + len(theirs)
        if theirs == ours:
            same += 1
            continue
        k = next(i for i in range(min(len(ours), len(theirs)) + 1)
                 if i == len(ours) or i == len(theirs) or ours[i] != theirs[i])
        with torch.no_grad():  # our logits at the first differing step: how close a tie it was
            logits = model(torch.tensor([(ids + ours[:k])[-block:]]))[0][0, -1]
        a = ours[k] if k < len(ours) else tok.eot_id
        b = theirs[k] if k < len(theirs) else tok.eot_id
        gaps.append(float(logits[a] - logits[b]))
    agree = total = 0
    worst = 0.0
    for text in texts:
        ids = tok.encode(text)[: block]
        with torch.no_grad():
            ours = model(torch.tensor([ids]))[0][0].float().numpy()
        llm.reset()
        llm.eval(ids)
        theirs = np.array(llm.scores[: len(ids)], dtype=np.float32)[:, : ours.shape[-1]]
        ours = ours[:, : theirs.shape[-1]]
        agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        total += len(ids)
        worst = max(worst, float(np.abs(ours - theirs).max()))
    return {"model": folder.name, "greedy": f"{same}/{len(prompts)}",
            "near_ties": ", ".join(f"{g:.4f}" for g in gaps) or "—", "next_token": f"{agree}/{total}",
            "max_logit_diff": worst, "ours_tok_s": n_ours / max(t_ours, 1e-9),
            "llama_tok_s": n_theirs / max(t_theirs, 1e-9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a `llmrecipe run` folder (its base, sft, dpo, rl)")
    ap.add_argument("--gpt2", help="the shared data folder: also a model with GPT-2's tokenizer")
    ap.add_argument("--work", default="/tmp/gguf_parity")
    ap.add_argument("--kv-cache", choices=("f16", "f32"), default="f16",
                    help="llama.cpp's KV cache type (f16: its default, what users run)")
    ap.add_argument("--out", help="append the markdown table here")
    a = ap.parse_args()
    lc = llama_cpp()
    run, work = Path(a.run), Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    questions = [json.loads(x)["question"] for x in (run / "world" / "eval" / "gsm8k" / "test.jsonl")
                 .read_text().splitlines()[:20]]
    docs = [json.loads(x)["text"] for x in (run / "world" / "pretrain.jsonl").read_text().splitlines()[-20:]]
    rows = []
    for stage in ("base", "sft", "dpo", "rl"):
        _, tok = load_model(run / stage)
        if stage == "base":
            prompts = [tok.encode(d[:60]) for d in docs]
        else:
            prompts = [encode_chat([{"role": "user", "content": q}], tok, add_generation_prompt=True).ids
                       for q in questions]
        rows.append(compare(lc, run / stage, prompts, docs, work, kv=a.kv_cache))
        print(rows[-1], flush=True)
    if a.gpt2:
        from llmrecipe.checkpoint import save_model
        from llmrecipe.model import GPT, GPTConfig
        from llmrecipe.tokenizer import GPT2Tokenizer

        data = Path(a.gpt2)
        os.environ.setdefault("LLMRECIPE_GPT2_RANKS", str(data / "tokenizer" / "r50k_base.tiktoken"))
        tok = GPT2Tokenizer(str(data / "tokenizer" / "r50k_base.tiktoken"))
        torch.manual_seed(0)
        folder = work / "gpt2-tokenizer"
        if not (folder / "model.json").is_file():
            save_model(folder, GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=512)), tok)
        texts = [json.loads(x)["text"][:3000] for x in
                 (data / "pretrain" / "fineweb_edu_sample10BT_150.jsonl").read_text().splitlines()[:20]]
        rows.append(compare(lc, folder, [tok.encode(t[:80]) for t in texts], texts, work, kv=a.kv_cache))
        print(rows[-1], flush=True)
    head = (f"\n### llama.cpp vs our engine (`python bench/gguf_parity.py --run {a.run}"
            f"{' --gpt2 ' + a.gpt2 if a.gpt2 else ''} --kv-cache {a.kv_cache}`; {cpu_name()}, "
            f"{os.cpu_count()} cores, "
            f"llama-cpp-python {VERSION}, {time.strftime('%Y-%m-%d')})\n\n"
            "| model | greedy continuations equal | logit gap where they differ | next-token argmax equal | "
            "max abs logit diff | ours tok/s | llama.cpp tok/s |\n|---|---:|---|---:|---:|---:|---:|\n")
    table = head + "".join(f"| {r['model']} | {r['greedy']} | {r['near_ties']} | {r['next_token']} | "
                           f"{r['max_logit_diff']:.2e} | {r['ours_tok_s']:,.0f} | {r['llama_tok_s']:,.0f} |\n"
                           for r in rows)
    print(table)
    if a.out:
        with open(a.out, "a") as f:
            f.write(table)


if __name__ == "__main__":
    main()
