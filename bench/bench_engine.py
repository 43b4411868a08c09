"""Engine throughput vs Hugging Face `transformers` on the same weights, same device, same run:
MMLU-Pro scoring (questions/s, one forward per question) and greedy generation (new tokens/s at batch 1
and 32, ours with the KV cache vs `generate()`).

    python bench/bench_engine.py --data-dir ../shared/data/eval            # gpt2-124m shapes, random weights
    python bench/bench_engine.py --data-dir ... --preset tiny --tokenizer gpt2 --questions 32
"""
from __future__ import annotations

import argparse
import time

import torch

from llmrecipe.train import stage_config
from llmrecipe.engine import Engine
from llmrecipe.eval.harness import EvalModel
from llmrecipe.eval.mmlu_pro import LETTERS, MMLUPro
from llmrecipe.model import GPT, hf_config, to_hf_state_dict
from llmrecipe.runtime import setup
from llmrecipe.tokenizer import load_tokenizer


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt2-124m")
    ap.add_argument("--tokenizer", default="gpt2")
    ap.add_argument("--data-dir", required=True, help="folder holding mmlu_pro/ (e.g. ../shared/data/eval)")
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    a = ap.parse_args()
    import transformers

    rt = setup()
    tok = load_tokenizer(a.tokenizer)
    cfg = stage_config("pretrain", a.preset).model
    cfg.vocab_size = max(cfg.vocab_size, tok.vocab_size)
    torch.manual_seed(0)
    ours = GPT(cfg).to(rt.device).eval()
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(cfg))).to(rt.device).eval()
    hf.load_state_dict(to_hf_state_dict(ours), strict=False)
    engine = Engine(ours, tok, rt, batch_size=8)
    model = EvalModel("bench", engine, chat=False, source={})
    suite = MMLUPro(data_dir=a.data_dir)
    items = suite.items(a.questions)
    prompts = [suite.prompt(model, it) for it in items]
    letters = [tok.encode(f" {c}")[0] for c in LETTERS]

    def hf_scores():
        with torch.no_grad(), rt.autocast():
            for p in prompts:  # one forward per question, last position, as ours
                hf(torch.tensor([p], device=rt.device)).logits[0, -1, letters].float().log_softmax(-1)

    t_ours = timed(lambda: engine.next_token_logprobs(prompts, letters))
    t_hf = timed(hf_scores)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    mean_prompt = sum(map(len, prompts)) / len(prompts)
    print(f"device {dev}; preset {a.preset}; mean MMLU-Pro prompt {mean_prompt:.0f} tokens")
    print("| what | ours | HF | ours/HF |\n|---|---:|---:|---:|")
    print(f"| MMLU-Pro scoring, questions/s | {len(items) / t_ours:.2f} | {len(items) / t_hf:.2f} | "
          f"{t_hf / t_ours:.2f}x |")
    base = [tok.encode("The following are multiple choice questions about history and the")]
    for B in (1, 32):
        batch = [base[0][: 8 + (i % 5)] for i in range(B)] if B > 1 else base
        n = a.new_tokens

        def hf_gen():
            pad = max(len(p) for p in batch)
            ids = torch.tensor([[0] * (pad - len(p)) + p for p in batch], device=rt.device)
            mask = torch.tensor([[0] * (pad - len(p)) + [1] * len(p) for p in batch], device=rt.device)
            with torch.no_grad(), rt.autocast():
                hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                            pad_token_id=0, eos_token_id=None)

        eng = Engine(ours, tok, rt, batch_size=B)
        eng.tok = _NoStop(tok)  # count full-length outputs: never stop at EOT
        t_ours, t_hf = timed(lambda: eng.generate(batch, n)), timed(hf_gen)
        print(f"| generation B={B}, new tokens/s | {B * n / t_ours:,.0f} | {B * n / t_hf:,.0f} | "
              f"{t_hf / t_ours:.2f}x |")


class _NoStop:
    def __init__(self, tok):
        self.tok, self.eot_id = tok, -1

    def __getattr__(self, name):
        return getattr(self.tok, name)


if __name__ == "__main__":
    main()
