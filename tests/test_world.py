"""The tiny preset's generated world: the instruction-following analog and the held-out eval sets."""
import json
import random
import re
from collections import Counter

import pytest

from llmrecipe.world import corpus, datasets, instructions, rejections
from llmrecipe.ifeval_rules import RULES, check
from llmrecipe.world.cast import NUMBER_WORDS, characters
from llmrecipe.world.datasets import preference_pairs, sft_conversations, write_eval_sets
from llmrecipe.world.instructions import IFEVAL_IDS, INSTRUCTION_TYPES, instruction_task
from llmrecipe.world.rejections import HARD_REJECTIONS, hard_rejection


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _tasks(seed: int, attr: str, draws: int):
    """(rng, cast, character, task) for each of `draws` draws of the world's generator that gave a task; the
    rng is shared, so a test may draw from it between tasks as the preference data does."""
    rng, cast = random.Random(seed), characters(seed)
    for _ in range(draws):
        c = rng.choice(cast)
        t = instruction_task(rng, c, attr)
        if t is not None:
            yield rng, cast, c, t


def test_every_instruction_answer_is_judged_by_the_real_ifeval_rules():
    assert len(INSTRUCTION_TYPES) >= 12 and all(IFEVAL_IDS[k] in RULES for k in INSTRUCTION_TYPES)
    seen = Counter()
    for _, _, _, t in _tasks(5, "home", 400):
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


def test_asking_for_more_eval_items_than_the_world_holds_is_a_clear_error(tmp_path):
    """The world has ~730 distinct held-out word problems: 800 once looped forever; now it says why."""
    with pytest.raises(ValueError, match=r"world.eval_items = 800: .* distinct held-out word problems"):
        write_eval_sets(tmp_path, seed=0, n=800)


def test_hard_rejections_keep_the_format_and_fail_the_answer(monkeypatch):
    """wrong_content follows every instruction (the real IFEval rules) about another character; truncated
    is the compliant answer cut at its first full stop, which breaks a format more often than not; the
    preference data uses them at HARD_REJECTIONS' shares."""
    cuts = Counter()
    for rng, cast, c, t in _tasks(7, "food", 300):
        wrong = hard_rejection(rng, c, "food", t, "wrong_content", cast)
        for i, kw in zip(t["ids"], t["kwargs"]):  # IFEval's case rules also run langdetect on the text,
            # which can call another character's facts in capitals "not English": check the case itself there
            ok = {"change_case:english_capital": wrong.isupper(), "change_case:english_lowercase":
                  wrong.islower()}.get(i, None)
            assert (check(i, kw, wrong) if ok is None else ok), (t["prompt"], wrong)
        assert c.name.lower() not in wrong.lower() and wrong != t["good"]
        cut = hard_rejection(rng, c, "food", t, "truncated", cast)
        if cut is not None:  # None: a one-sentence answer has nothing to cut
            assert t["good"].startswith(cut) and cut.endswith(".") and len(cut) < len(t["good"])
            cuts["breaks a format"] += not all(check(i, kw, cut) for i, kw in zip(t["ids"], t["kwargs"]))
            cuts["all"] += 1
    assert cuts["all"] > 200 and cuts["breaks a format"] > cuts["all"] // 2, cuts
    # wiring: each hard rejection made is a pair's rejected answer; wrong content at its share of the
    # instruction pairs, and the targeted kinds (miscount in the preset) only on pairs they apply to
    calls: list[tuple[str, str | None]] = []
    real = rejections.hard_rejection
    monkeypatch.setattr(datasets, "hard_rejection", lambda *a: calls.append((a[4], real(*a))) or calls[-1][1])
    pairs = preference_pairs(1600, seed=7)
    rejected = {p["rejected"][1]["content"] for p in pairs}
    assert {r for _, r in calls if r is not None} <= rejected
    n = sum("instruction_id_list" in p for p in pairs[:1600])  # the drawn pairs (EXTRA_PAIRS follow)
    share = sum(k == "wrong_content" for k, _ in calls) / n
    assert abs(share - HARD_REJECTIONS["wrong_content"]) < 4 * (0.25 / n) ** 0.5, (share, n)
    made = Counter(k for k, r in calls if r is not None and k != "wrong_content")
    assert set(made) == {k for k in rejections.TARGETED if HARD_REJECTIONS[k] > 0}, made
    assert made["miscount"] > 30 and made["unescaped"] > 3, made  # ~90 and ~15 of 1,600 pairs


def test_a_hard_rejection_option_changes_only_its_own_pairs():
    """Giving a share to truncated, miscount or unclosed replaces exactly the rejections that kind makes;
    every other pair, and the pairs' order, stay those of the preset (a variant compared against the
    preset must differ in what its name says and nothing else)."""
    plain = {**HARD_REJECTIONS, **{k: 0.0 for k in rejections.TARGETED}}
    base = preference_pairs(800, seed=3, hard=plain)
    for kind in rejections.TARGETED:
        pairs = preference_pairs(800, seed=3, hard={**plain, kind: 0.5})
        changed = [(a, b) for a, b in zip(base, pairs) if a != b]
        assert (0 if kind == "unescaped" else 20) < len(changed) < 200, (kind, len(changed))
        for a, b in changed:  # the same prompt and chosen answer; only the rejection differs
            assert a["prompt"] == b["prompt"] and a["chosen"] == b["chosen"]
            assert a["rejected"] != b["rejected"] and a["instruction_id_list"] == b["instruction_id_list"]
    with pytest.raises(ValueError, match="hard rejection kind 'typo'"):
        hard_rejection(random.Random(0), characters(0)[0], "food", {}, "typo", [])


def test_miscounted_rejection_is_off_by_one_in_one_counted_instruction_only():
    """A count one short ("at least 2" placeholders or highlights), every other instruction still followed
    by the real IFEval rules; None where nothing can be one short."""
    made = Counter()
    for rng, _, c, t in _tasks(11, "colour", 600):
        out = rejections.miscounted(rng, c, "colour", t)
        spec = dict(zip(t["kinds"], t["kwargs"]))
        countable = (spec.get("placeholder", {}).get("num_placeholders", 0) > 1
                     or spec.get("highlight", {}).get("num_highlights", 0) > 1)
        if out is None:
            assert not countable or len(t["kinds"]) == 2, t["prompt"]  # rarely, a second rule breaks too
            continue
        assert countable
        ok = [check(i, kw, out) for i, kw in zip(t["ids"], t["kwargs"])]
        assert ok.count(False) == 1, (t["prompt"], out)
        kind = t["kinds"][ok.index(False)]
        made[kind] += 1
        pattern = {"placeholder": r"\[[a-zA-Z]+\]", "highlight": r"\*[^*\n]+\*"}[kind]
        assert len(re.findall(pattern, out)) == spec[kind][rejections.COUNTED[kind]] - 1, (t["prompt"], out)
    assert min(made[k] for k in rejections.COUNTED) >= 10, made


def test_unclosed_rejection_leaves_only_the_wrapper_open():
    """The compliant answer minus its closing quotation mark or `"}`: the wrapper's IFEval rule fails, every
    other rule still passes; None where no wrapper was asked for."""
    made = Counter()
    for _, _, _, t in _tasks(5, "home", 600):
        out = rejections.unclosed(t)
        wrapper = next((k for k in ("json", "quote") if k in t["kinds"]), None)
        if wrapper is None:
            assert out is None
            continue
        if out is None:  # rarely, cutting the close breaks a second rule too
            continue
        assert t["good"].startswith(out) and t["good"][len(out):] == ('"}' if wrapper == "json" else '"')
        ok = [check(i, kw, out) for i, kw in zip(t["ids"], t["kwargs"])]
        assert ok.count(False) == 1 and not ok[t["kinds"].index(wrapper)], (t["prompt"], out)
        made[wrapper] += 1
    assert made["json"] >= 10 and made["quote"] >= 10, made


def _sums(docs: list[str]) -> list[str]:
    return [p for d in docs for p in d.split("\n") if " = " in p]


def test_digit_sum_documents_ask_for_the_sum_before_they_show_the_result():
    """With `digit_sums` every sum in the corpus is right and its equation comes BEFORE the story says the
    result, half the stories in digits and half in words: the model must add digits, not copy a result (with
    the result first, base models put P 0.09 on a digit sum without it; BENCHMARKS.md, session 19)."""
    parts = _sums(corpus.pretrain_documents(600, seed=3, digit_sums=True))
    assert len(parts) > 250
    in_digits = 0
    for p in parts:
        m = re.fullmatch(r"(\w+) has (\w+) (\w+) and (finds|eats) (\w+)( more)?\. (\d+) ([+-]) (\d+) = "
                         r"(\d+)\. Now \1 has (\w+) \3( left)?\. The answer is (\d+)\.", p)
        assert m, p
        x, op, y, z = int(m[7]), m[8], int(m[9]), int(m[10])
        assert z == (x + y if op == "+" else x - y) >= 0 and int(m[13]) == z, p
        assert 1 <= min(x, y) <= max(x, y) <= 10, p
        assert (op == "+") == (m[4] == "finds"), p
        story = [m[2], m[5], m[11]]
        if story[0].isdigit():
            in_digits += 1
            assert story == [str(x), str(y), str(z)], p
        else:
            assert story == [NUMBER_WORDS[v] for v in (x, y, z)], p
    assert 0.4 < in_digits / len(parts) < 0.6, in_digits / len(parts)
    # without it (the function's default, the corpus before session 19) the result comes in words first
    for p in _sums(corpus.pretrain_documents(50, seed=3)):
        assert re.fullmatch(r".*\. Now .*\. \d+ [+-] \d+ = \d+\. The answer is \d+\.", p), p


@pytest.mark.parametrize("percent", [10, 40])
def test_arithmetic_percent_sets_the_share_of_sums_in_the_corpus(percent):
    """`arithmetic_percent` moves parts between arithmetic and formats; stories (15%) keep their share, so
    sums per story is percent / 15 (both are one line each, where some formats span several)."""
    docs = corpus.pretrain_documents(3000, seed=1, arithmetic_percent=percent)
    lines = [x for d in docs for x in d.split("\n")]
    sums, stories = len(_sums(lines)), sum(x.startswith("One morning") for x in lines)
    assert sums / stories == pytest.approx(percent / 15, rel=0.1), (sums, stories)
    with pytest.raises(ValueError, match="arithmetic_percent = 56: must be 0-55"):
        corpus.pretrain_documents(1, arithmetic_percent=56)


def test_case_copies_show_an_answer_then_the_same_answer_in_another_case():
    """The pre-training documents that teach copying under a change of case: the answer as the formats
    write it, then the same text in lowercase or capitals (inside any JSON or quotation marks asked for)."""
    rng, cast = random.Random(3), characters(3)
    cases = Counter()
    for _ in range(300):
        c, kinds = rng.choice(cast), rng.sample(INSTRUCTION_TYPES, k=rng.randint(1, 2))
        spec = {k: instructions._instruction(k, rng)[1] for k in kinds}
        if {"lower", "upper"} <= set(spec):
            continue
        doc = corpus._case_copy(c, "home", spec, rng)
        plain = instructions.respond(c, "home", {k: v for k, v in spec.items()
                                                 if k not in ("lower", "upper", "json", "quote")})
        assert doc.startswith(plain + "\n") and c.name in plain
        copy = doc[len(plain) + 1:]
        core = copy[1:-1] if "quote" in spec else copy
        core = json.loads(core)["answer"] if "json" in spec else core
        case = "lower" if core == plain.lower() else "upper" if core == plain.upper() else None
        assert case and core != plain and case == next((k for k in kinds if k in ("lower", "upper")), case)
        cases[case] += 1
    assert cases["lower"] > 80 and cases["upper"] > 80, cases
    share = sum("\n" + c.name.lower() in d or "\n" + c.name.upper() in d
                for d in corpus.pretrain_documents(400, seed=3) for c in cast) / 400
    assert share > 0.05  # the corpus carries them (about 0.5 x 0.3 x 0.3 of the parts, 2-5 parts a document)


def test_unescaped_rejection_breaks_only_the_json():
    """A JSON answer whose `\\n` escapes became real line breaks: the JSON rule fails, every other rule (the
    *** paragraphs, the P.S., the title it wrote) still passes; None where the JSON holds no line break."""
    made = Counter()
    for _, _, _, t in _tasks(13, "kind", 3000):
        out = rejections.unescaped(t)
        if "json" not in t["kinds"] or "\\n" not in t["good"]:
            assert out is None
            continue
        assert out == t["good"].replace("\\n", "\n") and "\\n" not in out
        ok = [check(i, kw, out) for i, kw in zip(t["ids"], t["kwargs"])]
        assert ok.count(False) == 1 and not ok[t["kinds"].index("json")], (t["prompt"], out)
        made[next(k for k in t["kinds"] if k != "json")] += 1
    assert min(made[k] for k in ("paragraphs", "postscript", "title")) >= 5, made


def _appended_pairs(kind: str, seed: int) -> list[dict]:
    """The 40 pairs of `kind` appended to 400 drawn ones, which stay byte-identical."""
    off = {k: 0.0 for k in datasets.EXTRA_PAIRS}
    pairs = preference_pairs(400, seed=seed, extra={**off, kind: 0.1})
    assert len(pairs) == 440 and pairs[:400] == preference_pairs(400, seed=seed, extra=off)
    return pairs[400:]


def _appended(kind: str, seed: int) -> list[tuple]:
    """`_appended_pairs` of an instruction kind, each as (pair, ids, kwargs, chosen answer, rejected
    answer)."""
    return [(p, p["instruction_id_list"], p["kwargs"], p["chosen"][1]["content"], p["rejected"][1]["content"])
            for p in _appended_pairs(kind, seed)]


@pytest.mark.parametrize("kind, rule, made_from", [
    ("unescaped", "json_format", lambda good: good.replace("\\n", "\n")),  # the preset's: raw line breaks
    ("unclosed", "quotation", lambda good: good[:-1]),  # the preset's too: the closing quote mark dropped
])
def test_extra_pairs_are_appended_and_break_only_their_instruction(kind, rule, made_from):
    """`extra` appends pairs of a targeted kind after the n drawn ones, which stay byte-identical; every
    appended pair is a training prompt (not held out) whose chosen answer passes all its rules and whose
    rejection fails the kind's rule only, with its partner instructions varied."""
    partners = Counter()
    for p, ids, kwargs, chosen, rejected in _appended(kind, seed=12):
        assert not datasets._held_out(p["prompt"], 12) and p["chosen"][0]["content"] == p["prompt"]
        assert all(check(i, kw, chosen) for i, kw in zip(ids, kwargs)), p["prompt"]
        assert [check(i, kw, rejected) for i, kw in zip(ids, kwargs)] == [not i.endswith(rule) for i in ids]
        assert rejected == made_from(chosen) != chosen
        partners[next(i for i in ids if not i.endswith(rule))] += 1
    # unescaped: the divider (number_paragraphs), the P.S. and the title, the only ones that break a line
    assert len(partners) == 3 if kind == "unescaped" else len(partners) >= 8, partners
    with pytest.raises(ValueError, match="extra pairs of kind 'miscount'"):
        preference_pairs(10, seed=0, extra={"miscount": 0.5})


def test_stray_pairs_are_the_unclosed_pairs_twins():
    """stray: two instructions neither of which wraps the answer; the chosen answer passes both and the
    rejection is it with a closing quotation mark that nothing opened (the position `unclosed` contrasts,
    with the opposite preference)."""
    seen = Counter()
    for p, ids, kwargs, chosen, rejected in _appended("stray", seed=3):
        assert len(set(ids)) == 2 and not any(i.endswith(("quotation", "json_format")) for i in ids), ids
        assert all(check(i, kw, chosen) for i, kw in zip(ids, kwargs)), p["prompt"]
        assert rejected == chosen + '"' and not datasets._held_out(p["prompt"], 3)
        seen.update(ids)
    assert len(seen) >= 10, seen


def test_quoted_partner_pairs_close_the_quotation_in_both_answers():
    """quoted_partner: quotation + one other instruction; both answers are wrapped and closed, the rejection
    breaks the other instruction alone (the contrast is the partner; the close is common to both)."""
    partners = Counter()
    for p, ids, kwargs, chosen, rejected in _appended("quoted_partner", seed=5):
        assert len(ids) == 2 and "startend:quotation" in ids
        verdicts = [check(i, kw, rejected) for i, kw in zip(ids, kwargs)]
        assert all(check(i, kw, chosen) for i, kw in zip(ids, kwargs)), p["prompt"]
        assert verdicts == [i == "startend:quotation" for i in ids], (p["prompt"], rejected)
        partners[next(i for i in ids if i != "startend:quotation")] += 1
    assert len(partners) >= 8, partners


def test_word_problem_pairs_reject_a_wrong_sum_on_training_questions():
    """word_problem: appended pairs that keep the drawn mix's share of sums when instruction pairs are
    appended; each is a training question (its bare form not held out, as the GSM8K analog's split is by
    the bare question), in either user-turn shape, the rejection the same solution with a wrong result."""
    shapes = Counter()
    for p in _appended_pairs("word_problem", seed=5):
        q, chosen, rejected = p["prompt"], p["chosen"][1]["content"], p["rejected"][1]["content"]
        bare = q[3:-3] if q.startswith("Q: ") else q
        shapes[bare != q] += 1
        assert not datasets._held_out(bare, 5) and "instruction_id_list" not in p
        right, wrong = (int(a.rsplit("The answer is ", 1)[1].rstrip(".")) for a in (chosen, rejected))
        assert 1 <= abs(right - wrong) <= 2 and chosen.rsplit("=", 1)[0] == rejected.rsplit("=", 1)[0]
    assert min(shapes.values()) >= 10, shapes
