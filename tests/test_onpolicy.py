"""On-policy rejections (train/onpolicy.py): the checks agree with the world that wrote the answers, and the
stage replaces exactly the rejections of rows where a sample of the model failed a check."""
from __future__ import annotations

import json
from collections import Counter

from llmrecipe.cli import main
from llmrecipe.world.datasets import preference_pairs
from llmrecipe.files import atomic_write_text
from llmrecipe.train.onpolicy import OnPolicyConfig, failed_checks, onpolicy_pairs, states


def test_states_ignores_case_punctuation_and_markup_but_not_words():
    fact = "Wren is a fox."
    for answer in ("Wren is a fox.", "*WREN IS A FOX.*", '{"answer": "wren is a fox. wren likes honey."}',
                   "<<Wren the fox>>\n* Wren is a fox.", '{"answer": "<<Wren the fox>>\\nWren is a fox."}',
                   '"Wren is a fox"'):
        assert states(answer, fact), answer
    for answer in ("Wren is a foxglove.", "Wren is not a fox.", "Bo is a fox.", "Awren is a fox.", ""):
        assert not states(answer, fact), answer


def test_world_pairs_carry_checks_that_pass_the_chosen_and_fail_most_rejections():
    """The labeller must agree with the generator: every chosen answer of the world passes its own checks
    (else on-policy pairs would reject correct samples); the rejections that fail are the ones meant to."""
    pairs = preference_pairs(1600, seed=3)
    checked = [p for p in pairs if "instruction_id_list" in p]
    assert 0.5 < len(checked) / len(pairs) < 0.7  # the instruction pairs (60% of draws, less held-out ones)
    why = Counter()
    for p in checked:
        assert failed_checks(p, p["chosen"][1]["content"]) == [], p
        bad = failed_checks(p, p["rejected"][1]["content"])
        why["must_state" if "must_state" in bad else "instruction" if bad else "passes"] += 1
    # wrong content 20% → must_state; one instruction missing → an IFEval rule; unasked additions pass
    assert 0.14 < why["must_state"] / len(checked) < 0.26, why
    assert why["instruction"] > why["passes"] > 0, why


def _write(path, rows):
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _row(prompt, chosen, rejected, **checks):
    user = {"role": "user", "content": prompt}
    return {"prompt": prompt, "chosen": [user, {"role": "assistant", "content": chosen}],
            "rejected": [user, {"role": "assistant", "content": rejected}], **checks}


def test_stage_replaces_rejections_with_failing_samples_only(tiny_base, tmp_path):
    """A model pre-trained on web text cannot write JSON about Wren: its samples fail, and they become the
    rejections; a row any answer passes (a word nobody writes is forbidden) and a row without checks keep
    theirs. Same seed, same file (from the function or the CLI)."""
    rows = [_row("Where does Wren live? Wrap your whole answer in JSON.",
                 '{"answer": "Wren lives in Oakvale."}', "Wren lives in Oakvale.",
                 instruction_id_list=["detectable_format:json_format"], kwargs=[{}],
                 must_state="Wren lives in Oakvale."),
            _row("Say anything.", "Anything.", "No.", instruction_id_list=["keywords:forbidden_words"],
                 kwargs=[{"forbidden_words": ["qxzzyq"]}]),
            _row("What is 2 + 2?", "4", "5")]
    _write(tmp_path / "pairs.jsonl", rows)
    cfg = OnPolicyConfig(samples=3, max_new_tokens=24, model=str(tiny_base),
                         data=str(tmp_path / "pairs.jsonl"))
    summary = onpolicy_pairs(cfg, tmp_path / "a")
    out = [json.loads(x) for x in (tmp_path / "a" / "preferences.jsonl").read_text().splitlines()]
    assert summary["rows"] == 3 and summary["checkable"] == 2 and summary["replaced"] == 1, summary
    assert summary["sample_failure_rate"]["detectable_format:json_format"] == 1.0
    sampled = out[0]["rejected"][1]["content"]
    assert out[0]["rejected_source"] == "sft_sample" and sampled.strip() and failed_checks(rows[0], sampled)
    assert out[0]["chosen"] == rows[0]["chosen"] and out[0]["rejected"][0] == rows[0]["rejected"][0]
    assert out[1] == rows[1] and out[2] == rows[2]
    # the same through the CLI: same settings, same seed, same file
    main(["onpolicy", "--sft", str(tiny_base), "--data", cfg.data, "--out", str(tmp_path / "b"),
          "--samples", "3", "--max-new-tokens", "24"])
    a, b = (tmp_path / d / "preferences.jsonl" for d in "ab")
    assert a.read_bytes() == b.read_bytes()


def test_bad_checks_name_the_file_row_and_field(tmp_path):
    import pytest

    from llmrecipe.data.sources import DataError

    _write(tmp_path / "p.jsonl", [_row("Q", "A", "B", instruction_id_list=["no:such_rule"], kwargs=[{}])])
    with pytest.raises(DataError, match=r"p\.jsonl.*(row|line) 1.*instruction_id_list.*no:such_rule"):
        onpolicy_pairs(OnPolicyConfig(samples=2, model="unused", data=str(tmp_path / "p.jsonl")),
                       tmp_path / "o")
