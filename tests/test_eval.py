import json

import pytest
import torch

from llmrecipe.eval import make_suites
from llmrecipe.eval.gsm8k import GSM8K, extract_flexible, extract_strict, gold_answer, normalize
from llmrecipe.eval.harness import EvalModel, compare_table, evaluate, load_eval_model, write_table
from llmrecipe.eval.mmlu_pro import LETTERS, MMLUPro, load_split


@pytest.fixture(scope="module")
def eval_dir(data_dir):
    return str(data_dir / "eval")


@pytest.mark.parametrize("output, strict, flexible", [
    ("She has 16 - 3 - 4 = 9 eggs. 9 * 2 = 18. The answer is 18.", "18", "18"),
    ("The answer is $1,234.", None, "1234"),  # lm-eval's strict regex admits no "$"
    ("So the total is 12.50 dollars. The answer is 12.50.", "12.5", "12.5"),
    ("The answer is 7.0. Q: next", "7", "7"),
    ("3 + 4 = 7 so she gets 7 apples", None, "7"),
    ("The answer is -5.", "-5", "-5"),
    ("First 10, then 20. The answer is 30. Then 40 more.", "30", "40"),
    ("no digits at all", None, None),
])
def test_answer_extraction_table(output, strict, flexible):
    assert extract_strict(output) == strict and extract_flexible(output) == flexible


def test_gold_and_normalisation():
    assert gold_answer("Janet sells 9 eggs.\n#### 18") == "18"
    assert gold_answer("...\n#### 1,000") == "1000"
    assert normalize("$5.00") == "5" and normalize("5.") == "5" and normalize("0.50") == "0.5"


class StubEngine:
    """A test double of the engine: answers from the gold data, counting calls (plumbing tests only)."""

    def __init__(self, tok, gold: dict[str, str], marker: str, block=100_000):
        self.tok, self.gold, self.marker, self.block, self.calls = tok, gold, marker, block, 0

    def _question(self, ids) -> str:
        text = self.tok.decode(ids)
        asked = text[text.rindex(self.marker) + len(self.marker):]  # the last question in the prompt
        return next(q for q in self.gold if asked.startswith(q))

    def next_token_logprobs(self, contexts, candidates):
        self.calls += len(contexts)
        out = torch.full((len(contexts), len(candidates)), -5.0)
        for i, c in enumerate(contexts):
            out[i, LETTERS.index(self.gold[self._question(c)])] = -0.1
        return out

    def generate(self, prompts, max_new_tokens, **kw):
        self.calls += len(prompts)
        return [self.tok.encode(self.gold[self._question(p)]) for p in prompts]


def test_stub_that_knows_the_answers_scores_100_percent(eval_dir, tmp_path):
    from llmrecipe.tokenizer import GPT2Tokenizer
    tok = GPT2Tokenizer()
    mmlu = MMLUPro(data_dir=eval_dir)
    items = mmlu.items(28)
    assert sorted({it["category"] for it in items}) == sorted({it["category"] for it in load_split(eval_dir, "test")})
    stub = StubEngine(tok, {it["question"]: it["answer"] for it in items}, "Question: ")
    model = EvalModel("stub", stub, chat=False, source={"model": "stub", "prompting": "few-shot"})
    res = evaluate(model, [mmlu], tmp_path / "eval.json", limit=28)
    assert res["suites"]["mmlu_pro"]["accuracy"] == 1.0 and res["suites"]["mmlu_pro"]["items"] == 28
    gsm = GSM8K(data_dir=eval_dir)
    solutions = {}
    for line in open(f"{eval_dir}/gsm8k/test.jsonl").readlines()[:10]:
        r = json.loads(line)
        work, _, final = r["answer"].partition("####")
        solutions[r["question"]] = f"{work.strip()} The answer is {final.strip()}."
    model.engine = StubEngine(tok, solutions, "Q: ")
    res = evaluate(model, [gsm], tmp_path / "eval.json", limit=10)
    assert res["suites"]["gsm8k"]["strict"] == 1.0
    calls = model.engine.calls
    evaluate(model, [gsm], tmp_path / "eval.json", limit=10)  # resumable: nothing is recomputed
    assert model.engine.calls == calls
    recs = [json.loads(x) for x in (tmp_path / "eval.gsm8k.jsonl").read_text().splitlines()]
    assert len(recs) == 10 and all(r["correct"] and r["gold"] == r["strict"] for r in recs)


def test_both_suites_run_on_real_files_with_a_tiny_model(tiny_base, eval_dir, tmp_path):
    m = load_eval_model(str(tiny_base), rt=None)
    assert not m.chat and m.source["prompting"] == "few-shot"
    suites = make_suites("mmlu_pro,gsm8k", eval_dir)
    for s in suites:
        if isinstance(s, GSM8K):
            s.max_new_tokens = 16
    res = evaluate(m, suites, tmp_path / "base" / "eval.json", limit=14)
    mm, gs = res["suites"]["mmlu_pro"], res["suites"]["gsm8k"]
    assert 0.0 <= mm["accuracy"] <= 1.0 and len(mm["per_category"]) == 14 and 0.09 < mm["random_baseline"] < 0.2
    assert 0.0 <= gs["strict"] <= gs["flexible"] + 1.0 and gs["items"] == 14
    text = MMLUPro(data_dir=eval_dir, scoring="text")
    assert 0.0 <= evaluate(m, [text], tmp_path / "t.json", limit=3)["suites"]["mmlu_pro"]["accuracy"] <= 1.0
    table = write_table({"base": res, "sft": res, "dpo": res}, ["mmlu_pro", "gsm8k"], tmp_path / "table.md")
    lines = table.strip().splitlines()
    assert lines[0] == "| model | mmlu_pro | gsm8k |" and [ln.split("|")[1].strip() for ln in lines[2:]] == [
        "base", "sft", "dpo"]
    saved = json.loads((tmp_path / "table.json").read_text())
    assert saved["scores"].keys() == {"base", "sft", "dpo"}
    same = saved["comparisons"]["sft→dpo"]["paired"]["mmlu_pro"]  # a model against itself: exactly no difference
    assert (same["delta"], same["low"], same["high"], same["items"]) == (0.0, 0.0, 0.0, 14)
    assert "±" in lines[2]  # every score carries its standard error
    assert "n/a" in compare_table({"base": res}, ["mmlu_pro", "ifeval"])
    forced = load_eval_model(str(tiny_base), chat=True)  # the chat template path, forced
    res = evaluate(forced, suites, tmp_path / "chat" / "eval.json", limit=2)
    assert res["model"]["prompting"] == "chat" and res["suites"]["gsm8k"]["prompting"] == "chat"
    assert res["suites"]["mmlu_pro"]["items"] == 2
