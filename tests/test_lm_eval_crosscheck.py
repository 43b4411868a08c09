"""lm-evaluation-harness itself, run on our exported model, against our suites on the same items.

A small GPT-2-shaped model (2 layers, 64 wide, GPT-2's tokenizer, 1,024 positions; random weights: greedy
decoding is deterministic whatever the weights) is saved in our format and exported with `llmrecipe export`.
lm-eval's `hf` model runs its own `gsm8k_cot`, `leaderboard_mmlu_pro` and `ifeval` tasks on the local copies
of the data (tests/lm_eval_local.py); our suites run on the same items. Item by item: the same generated
text, the same GSM8K extractions and verdicts, the same MMLU-Pro log-likelihoods and choice, the same IFEval
verdicts — as plain few-shot text (a base model) and through the chat template (`--apply_chat_template
--fewshot_as_multiturn`, what a chat model gets: our template is exported with the model).
"""
import os
from pathlib import Path

import pytest
import torch

from lm_eval_local import LONG_QUESTION, local_task, manager, with_long_items

lm_eval = pytest.importorskip("lm_eval")
N, NEW = 6, 48  # items per task; new tokens per generation (lm-eval's gen_kwargs max_gen_toks)
# |Δ log-likelihood| between our engine and transformers on one CPU: 1.0e-6 plain, 1.9e-6 chat (a 2-layer,
# 64-wide model over 1,024 positions, fp32: a few hundred roundings of ~1e-7 relative); 10x that is the bar
MMLU_FP32 = 2e-5


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    from llmrecipe.checkpoint import save_model
    from llmrecipe.export import export_hf
    from llmrecipe.model import GPT, GPTConfig
    from llmrecipe.tokenizer import GPT2Tokenizer

    os.environ.setdefault("LLMRECIPE_GPT2_RANKS", str(data_dir / "tokenizer" / "r50k_base.tiktoken"))
    out = tmp_path_factory.mktemp("lm_eval")
    torch.manual_seed(0)
    model, tok = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64)).eval(), GPT2Tokenizer()
    save_model(out / "ours", model, tok)
    export_hf(out / "hf", model, tok)
    eval_dir = with_long_items(data_dir / "eval", out)  # an over-length first item in GSM8K and MMLU-Pro
    for name in ("gsm8k_cot", "leaderboard_mmlu_pro", "ifeval"):
        local_task(name, eval_dir, out / "tasks")
    samples = {}
    for mode, chat in (("plain", False), ("chat", True)):
        res = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={out / 'hf'},dtype=float32", device="cpu", batch_size=1,
            tasks=["local_gsm8k_cot", "local_leaderboard_mmlu_pro", "local_ifeval"], limit=N,
            log_samples=True,
            gen_kwargs=f"max_gen_toks={NEW}", task_manager=manager(out / "tasks"),
            apply_chat_template=chat, fewshot_as_multiturn=chat)
        samples[mode] = res["samples"]
        samples[mode]["results"] = res["results"]
    return out, str(eval_dir), samples


MODES = ("plain", "chat")


def _hf_tokenizer(runs):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(runs[0] / "hf"))


def _context(sample: dict) -> str:
    """The context string lm-eval built for a sample (its request's first argument)."""
    args = sample["arguments"]
    first = args[0] if isinstance(args, list) else next(iter(args.values()))
    return first[0] if isinstance(first, (list, tuple)) else first["arg_0"]


def _ours(out: Path, mode: str):
    from llmrecipe.eval.harness import load_eval_model
    from llmrecipe.runtime import setup

    return load_eval_model(str(out / "ours"), chat=mode == "chat", rt=setup("cpu"), batch_size=1)


def _paired(runs, mode: str, suite, task: str, key: str) -> tuple[list[dict], dict]:
    """Our records on the items lm-eval ran (matched by `key`), and lm-eval's samples by that key."""
    out, _, samples = runs
    theirs: dict = {}
    for s in samples[mode][task]:
        theirs.setdefault(s["doc"][key], {})[s["filter"]] = s
    ours = {it[key]: it for it in suite.items(None)}
    records = suite.evaluate(_ours(out, mode), [ours[k] for k in theirs])
    assert len(records) == N
    return records, theirs


@pytest.mark.parametrize("mode", MODES)
def test_gsm8k_generations_and_verdicts_equal_lm_eval(runs, mode):
    from llmrecipe.eval.gsm8k import GSM8K

    suite = GSM8K(data_dir=runs[1], max_new_tokens=NEW)
    records, theirs = _paired(runs, mode, suite, "local_gsm8k_cot", "question")
    assert LONG_QUESTION in theirs and sum(r["truncated"] for r in records) >= 1
    tok = _hf_tokenizer(runs)
    model = _ours(runs[0], mode)
    for rec in records:
        ref = theirs[rec["question"]]
        # the same prompt, token for token, before lm-eval's (and our) left cut to 1,024 - NEW tokens
        context = _context(ref["strict-match"])
        full = suite.full_prompt(model, {"question": rec["question"]})
        assert full == tok.encode(context, add_special_tokens=False)
        assert rec["truncated"] == (len(full) > 1024 - NEW) and rec["prompt_tokens"] == len(full)
        # the same greedy text, cut at the same stop
        assert rec["output"] == ref["strict-match"]["resps"][0][0]
        assert rec["strict"] == ref["strict-match"]["filtered_resps"][0]
        assert rec["flexible"] == ref["flexible-extract"]["filtered_resps"][0]
        assert float(rec["correct"]) == ref["strict-match"]["exact_match"]
        assert float(rec["correct_flexible"]) == ref["flexible-extract"]["exact_match"]
    accuracy = suite.summarize(records)["strict"]
    assert accuracy == runs[2][mode]["results"]["local_gsm8k_cot"]["exact_match,strict-match"]


@pytest.mark.parametrize("mode", MODES)
def test_mmlu_pro_loglikelihoods_and_choices_equal_lm_eval(runs, mode):
    from llmrecipe.eval.mmlu_pro import LETTERS, MMLUPro

    suite = MMLUPro(data_dir=runs[1])
    records, theirs = _paired(runs, mode, suite, "local_leaderboard_mmlu_pro", "question")
    assert LONG_QUESTION in theirs and sum(r["truncated"] for r in records) >= 1
    items = {it["question"]: it for it in suite.items(None)}
    model = _ours(runs[0], mode)
    chosen = [items[q] for q in theirs]
    raw = suite._letter_scores(model, chosen, [suite.prompt(model, it) for it in chosen])  # unrounded
    worst = 0.0
    for rec, q, ours in zip(records, theirs, raw):
        ref = theirs[q]["none"]  # multiple choice: no filter
        lls = [r[0] for r in ref["filtered_resps"]]
        if mode == "chat":
            # the chat context ends "<|assistant|>\n" and lm-eval moves trailing whitespace into every
            # continuation ("\nA"): its scores carry log p("\n"), the same constant for all options
            shift = lls[0] - ours[0]
            assert shift < 0
            lls = [x - shift for x in lls]
        worst = max(worst, max(abs(a - b) for a, b in zip(ours, lls)))
        assert rec["pred"] == LETTERS[max(range(len(lls)), key=lls.__getitem__)]
        assert float(rec["correct"]) == ref["acc"]
    # the same 1,024 positions through two fp32 implementations (SDPA vs transformers' attention): what
    # their rounding gives, far below any difference of prompt, truncation or scoring (those move a
    # log-likelihood by whole nats)
    print(f"\nMMLU-Pro {mode}: largest |log-likelihood difference| {worst:.2e}")
    assert worst < MMLU_FP32
    accuracy = suite.summarize(records)["accuracy"]
    assert accuracy == pytest.approx(runs[2][mode]["results"]["local_leaderboard_mmlu_pro"]["acc,none"])


@pytest.mark.parametrize("mode", MODES)
def test_ifeval_generations_and_verdicts_equal_lm_eval(runs, mode):
    from llmrecipe.eval.ifeval import IFEval

    suite = IFEval(data_dir=runs[1], max_new_tokens=NEW)
    records, theirs = _paired(runs, mode, suite, "local_ifeval", "prompt")
    for rec in records:
        ref = theirs[rec["prompt"]]["none"]
        assert rec["response"] == ref["resps"][0][0]
        assert rec["strict"] == ref["inst_level_strict_acc"] and rec["loose"] == ref["inst_level_loose_acc"]
        assert rec["correct"] == ref["prompt_level_strict_acc"]


def test_lm_eval_runs_the_qwen3_export_as_our_engine(data_dir, tmp_path):
    """The modern preset's export is a stock Qwen3ForCausalLM: lm-eval's `hf` model loads it with no code of
    ours and generates, item by item, the GSM8K text our suite generates from our checkpoint."""
    from llmrecipe.checkpoint import save_model
    from llmrecipe.eval.gsm8k import GSM8K
    from llmrecipe.export import export_hf
    from llmrecipe.model import GPT, GPTConfig
    from llmrecipe.tokenizer import GPT2Tokenizer

    os.environ.setdefault("LLMRECIPE_GPT2_RANKS", str(data_dir / "tokenizer" / "r50k_base.tiktoken"))
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=64, position="rope", norm="rmsnorm", norm_eps=1e-6,
                    qk_norm=True, mlp="swiglu", mlp_hidden=176, bias=False)
    model, tok = GPT(cfg).eval(), GPT2Tokenizer()
    save_model(tmp_path / "ours", model, tok)
    export_hf(tmp_path / "hf", model, tok)
    assert '"Qwen3ForCausalLM"' in (tmp_path / "hf" / "config.json").read_text()
    local_task("gsm8k_cot", data_dir / "eval", tmp_path / "tasks")
    n = 3
    res = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tmp_path / 'hf'},dtype=float32", device="cpu", batch_size=1,
        tasks=["local_gsm8k_cot"], limit=n, log_samples=True, gen_kwargs=f"max_gen_toks={NEW}",
        task_manager=manager(tmp_path / "tasks"))
    theirs = {s["doc"]["question"]: s for s in res["samples"]["local_gsm8k_cot"]
              if s["filter"] == "strict-match"}
    suite = GSM8K(data_dir=str(data_dir / "eval"), max_new_tokens=NEW)
    items = {it["question"]: it for it in suite.items(None)}
    records = suite.evaluate(_ours(tmp_path, "plain"), [items[q] for q in theirs])
    assert len(records) == n
    for rec in records:
        assert rec["output"] == theirs[rec["question"]]["resps"][0][0]
