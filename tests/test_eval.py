import json

import pytest
import torch

from llmrecipe.eval import make_suites
from llmrecipe.eval.gsm8k import STOP, GSM8K, extract_flexible, extract_strict, gold_answer, normalize
from llmrecipe.eval.harness import EvalModel, compare_table, evaluate, load_eval_model, write_table
from llmrecipe.eval.mmlu_pro import LETTERS, MMLUPro, load_split


@pytest.fixture(scope="module")
def eval_dir(data_dir):
    return str(data_dir / "eval")


def _gsm8k_cot_reference():
    """lm-evaluation-harness's own gsm8k_cot: its task YAML, regex filter and exact-match metric."""
    import yaml
    import lm_eval
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    from pathlib import Path
    cfg = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k-cot.yaml").read_text())
    filters = {f["name"]: f["filter"][0] for f in cfg["filter_list"]}
    metric = cfg["metric_list"][0]

    def verdict(name: str, output: str, gold: str) -> tuple[str, bool]:
        f = filters[name]
        pred = RegexFilter(f["regex_pattern"], f.get("group_select", 0)).apply([[output]], [{}])[0][0]
        em = exact_match_hf_evaluate([pred], [gold], regexes_to_ignore=metric["regexes_to_ignore"],
                                     ignore_case=metric["ignore_case"],
                                     ignore_punctuation=metric["ignore_punctuation"])["exact_match"]
        return pred, bool(em)
    return cfg, verdict


def _varied_outputs() -> list[tuple[str, str]]:
    """(output, gold) pairs meant to hit every corner of extraction and normalisation."""
    import random
    rng = random.Random(0)
    numbers = ["18", "3", "3.0", "3.00", "1,234", "1234", "$5", "$1,000", "-7", "12.50", "12.5", "0.5", ".5",
               "7.", "1,000.", "100", "2,5", "42"]
    golds = ["18", "3", "1234", "5", "1000", "-7", "12.5", "0.5", "7", "100", "42", "1,234"]
    shapes = ["{w} The answer is {n}.", "{w} The answer is {n}", "The answer is {n}. The answer is {m}.",
              "{w} So the answer is {n}.\n\nQ: next", "{w} {n} apples in all.", "#### {n}",
              "{w} The answer is {n}.\n#### {m}", "{w}\n\nThe answer is {n}.", "The answer is: {n}.",
              "no number here", "{n}", "{w} the answer is {n}.", "{w} The answer is {n}.{m}"]
    work = ["She has 16 - 3 - 4 = 9 eggs. 9 * 2 = 18.", "First 10, then 20.", "3 + 4 = 7", ""]
    out = []
    for _ in range(1600):
        n = rng.choice(numbers)
        text = rng.choice(shapes).format(w=rng.choice(work), n=n, m=rng.choice(numbers))
        out.append((text, n if rng.random() < 0.5 else rng.choice(golds)))  # half: the gold is what it wrote
    return out


def test_gsm8k_verdicts_equal_lm_evaluation_harness_gsm8k_cot():
    """Item by item, our strict and flexible extractions and verdicts are lm-eval's (its code, its YAML)."""
    cfg, verdict = _gsm8k_cot_reference()
    assert STOP == cfg["generation_kwargs"]["until"]  # the same stop strings (EOT stops generation too)
    disagreements, corrects = [], 0
    for output, gold in _varied_outputs():
        rec = GSM8K.record({"id": 0, "question": "", "gold": gold}, output)
        for ours, key, name in ((rec["strict"], "correct", "strict-match"),
                                (rec["flexible"], "correct_flexible", "flexible-extract")):
            ref_pred, ref_ok = verdict(name, output, gold)
            if (ours, rec[key]) != (ref_pred, ref_ok):
                disagreements.append((output, gold, name, ours, rec[key], ref_pred, ref_ok))
            corrects += ref_ok
    assert not disagreements, disagreements[:5]
    assert 500 < corrects < 2700  # of 3,200 verdicts: the sample exercises both outcomes


def test_gold_and_normalisation():
    assert gold_answer("Janet sells 9 eggs.\n#### 18") == "18"
    assert gold_answer("...\n#### 1,000") == "1,000" and normalize("1,000") == "1000"
    # lm-eval's normalisation, not a lenient one: one final "." goes, a ".0" stays
    assert normalize("$5.00") == "5.00" and normalize("5.") == "5" and normalize("3.0.") == "3.0"
    assert extract_strict("no answer") == "[invalid]" and extract_flexible("none") == "[invalid]"


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
    mmlu = MMLUPro(data_dir=eval_dir, layout="category")  # the stub finds the question after "Question: "
    items = mmlu.items(28)
    categories = sorted({it["category"] for it in load_split(eval_dir, "test")})
    assert sorted({it["category"] for it in items}) == categories
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
    assert 0.0 <= mm["accuracy"] <= 1.0 and len(mm["per_category"]) == 14
    assert 0.09 < mm["random_baseline"] < 0.2
    assert 0.0 <= gs["strict"] <= gs["flexible"] + 1.0 and gs["items"] == 14
    text = MMLUPro(data_dir=eval_dir, scoring="text")
    assert 0.0 <= evaluate(m, [text], tmp_path / "t.json", limit=3)["suites"]["mmlu_pro"]["accuracy"] <= 1.0
    table = write_table({"base": res, "sft": res, "dpo": res}, ["mmlu_pro", "gsm8k"], tmp_path / "table.md")
    lines = [ln for ln in table.strip().splitlines() if ln.startswith("|")]
    assert lines[0] == "| model | mmlu_pro | gsm8k |" and [ln.split("|")[1].strip() for ln in lines[2:]] == [
        "base", "sft", "dpo"]
    # 5-shot MMLU-Pro prompts exceed this model's 256-token context: cut (as lm-eval cuts), and counted
    assert mm["truncated"] >= 1 and f"mmlu_pro {mm['truncated']} of 14 (base)" in table
    saved = json.loads((tmp_path / "table.json").read_text())
    assert saved["scores"].keys() == {"base", "sft", "dpo"}
    # a model against itself: exactly no difference
    same = saved["comparisons"]["sft→dpo"]["paired"]["mmlu_pro"]
    assert (same["delta"], same["low"], same["high"], same["items"]) == (0.0, 0.0, 0.0, 14)
    assert "±" in lines[2]  # every score carries its standard error
    assert "n/a" in compare_table({"base": res}, ["mmlu_pro", "ifeval"])
    forced = load_eval_model(str(tiny_base), chat=True)  # the chat template path, forced
    res = evaluate(forced, suites, tmp_path / "chat" / "eval.json", limit=2)
    assert res["model"]["prompting"] == "chat" and res["suites"]["gsm8k"]["prompting"] == "chat"
    assert res["suites"]["mmlu_pro"]["items"] == 2


def test_mmlu_pro_prompts_equal_lm_evaluation_harness_leaderboard_mmlu_pro(eval_dir, tmp_path):
    """Item by item: our default MMLU-Pro prompt is leaderboard_mmlu_pro's context, token for token (lm-eval's
    own task on the same local files), the candidates are its continuations, and an over-long prompt is cut
    from the left exactly as lm-eval's HF model cuts it (the last 1,024 tokens before the letter)."""
    from pathlib import Path
    from types import SimpleNamespace

    from lm_eval_local import local_task
    from llmrecipe.tokenizer import GPT2Tokenizer

    task = local_task("leaderboard_mmlu_pro", Path(eval_dir), tmp_path)
    task.build_all_requests(limit=40, rank=0, world_size=1)
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    tok = GPT2Tokenizer()
    model = EvalModel("x", SimpleNamespace(tok=tok, block=1024), chat=False)
    suite = MMLUPro(data_dir=eval_dir)
    items = {it["question"]: it for it in load_split(eval_dir, "test")}
    for doc_id, insts in by_doc.items():
        doc = insts[0].doc
        item = items[doc["question"]]
        context = insts[0].args[0]
        assert [i.args[1] for i in insts] == [f" {c}" for c in LETTERS[: len(item["options"])]]
        ctx = tok.encode(context)
        lm_eval_input = (ctx + tok.encode(insts[0].args[1]))[-(1024 + 1):][:-1]  # HFLM's left truncation
        assert suite.prompt(model, item) == lm_eval_input, doc_id
    assert len(by_doc) == 40
    # and a prompt longer than the context, cut from the left (the 5 shots alone are ~1,100 tokens here)
    long = dict(next(iter(items.values())), question="word " * 2000)
    ids = suite.prompt(model, long)
    assert len(ids) == 1024 and tok.decode(ids).endswith("Answer:")


def test_gsm8k_prompts_equal_lm_evaluation_harness_gsm8k_cot(eval_dir, tmp_path):
    """Item by item: our 8-shot GSM8K prompt is gsm8k_cot's context token for token (lm-eval's own task on
    the same local files), cut from the left to the context minus the generation budget as lm-eval cuts it."""
    from pathlib import Path
    from types import SimpleNamespace

    from lm_eval_local import local_task
    from llmrecipe.tokenizer import GPT2Tokenizer

    from lm_eval_local import with_long_items

    eval_dir = str(with_long_items(Path(eval_dir), tmp_path))  # its first item exceeds the context
    task = local_task("gsm8k_cot", Path(eval_dir), tmp_path)
    task.build_all_requests(limit=30, rank=0, world_size=1)
    tok = GPT2Tokenizer()
    model = EvalModel("x", SimpleNamespace(tok=tok, block=1024), chat=False)
    suite = GSM8K(data_dir=eval_dir)  # 8 shots, 256 new tokens: lm-eval's max_gen_toks
    assert max(len(tok.encode(i.args[0])) for i in task.instances) > 1024  # the over-length item is there
    items = {it["question"]: it for it in suite.items(None)}
    assert len(task.instances) == 30
    for inst in task.instances:
        context, kwargs = inst.args
        assert kwargs["until"] == STOP or kwargs["until"][: len(STOP)] == STOP
        expected = tok.encode(context)[-(1024 - 256):]
        assert suite.prompt(model, items[inst.doc["question"]]) == expected, inst.doc_id
