"""The tiny preset's generated world: the instruction-following analog and the held-out eval sets."""
import json
import random
from collections import Counter

from llmrecipe.data.world import (IFEVAL_IDS, INSTRUCTION_TYPES, characters, instruction_task, preference_pairs,
                                  sft_conversations, write_eval_sets)
from llmrecipe.eval.ifeval.rules import RULES, check


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_every_instruction_answer_is_judged_by_the_real_ifeval_rules():
    assert len(INSTRUCTION_TYPES) >= 12 and all(IFEVAL_IDS[k] in RULES for k in INSTRUCTION_TYPES)
    rng, cast = random.Random(5), characters(5)
    seen = Counter()
    for _ in range(400):
        t = instruction_task(rng, rng.choice(cast), "home")
        if t is None:
            continue
        seen[len(t["kinds"])] += 1
        assert all(check(i, kw, t["good"]) for i, kw in zip(t["ids"], t["kwargs"])), t
        for k, i, kw in zip(t["kinds"], t["ids"], t["kwargs"]):  # each bad answer breaks its instruction
            assert not check(i, kw, t["bad"][k]), (k, t["bad"][k])
    assert seen[1] > 150 and seen[2] > 80  # single instructions and IFEval-style combinations


def test_eval_analogs_are_large_stratified_and_held_out(tmp_path):
    folder = write_eval_sets(tmp_path, seed=2, n=300)
    tasks, problems = _rows(folder / "ifeval" / "input_data.jsonl"), _rows(folder / "gsm8k" / "test.jsonl")
    assert len(tasks) == len(problems) == len(_rows(folder / "mmlu_pro" / "test.jsonl")) == 300
    first = Counter(t["instruction_id_list"][0] for t in tasks)
    assert len(first) == len(INSTRUCTION_TYPES) and min(first.values()) >= 300 // len(INSTRUCTION_TYPES)
    assert len({t["prompt"] for t in tasks}) == 300 and len({p["question"] for p in problems}) == 300
    trained = {c[0]["content"] for c in sft_conversations(1500, seed=2)}
    trained |= {p["prompt"] for p in preference_pairs(600, seed=2)}
    assert not trained & ({t["prompt"] for t in tasks} | {p["question"] for p in problems})
