import json
import math

import pytest
import torch

from llmrecipe.chat import IGNORE
from llmrecipe.data.preference import collate_pairs, load_pairs, parse_hh
from llmrecipe.data.sources import DataError
from llmrecipe.lora import LoRAConfig
from llmrecipe.runtime import setup
from llmrecipe.train.dpo import DPOConfig, DPOStage, dpo_loss, run_dpo, sequence_logps
from llmrecipe.train.loop import TrainConfig, make_optimizer


def dpo_cfg(sft, data, **train) -> DPOConfig:
    tc = dict(batch_size=4, grad_accum=1, max_steps=0, lr=5e-3, warmup_steps=0, schedule="constant",
              weight_decay=0.0, log_interval=1, eval_interval=0, save_interval=1000, seed=0)
    return DPOConfig(lora=LoRAConfig(r=8, alpha=16, dropout=0.0), train=TrainConfig(**{**tc, **train}),
                     sft=str(sft), data=str(data), beta=0.1, max_examples=64)


@pytest.fixture(scope="module")
def ufb(data_dir):
    return data_dir / "preference" / "ultrafeedback" / "ufb_h4schema_reconstructed_train_clean.parquet"


def reference_dpo_loss(pc, pr, rc, rr, beta):
    """Written from the paper's formula, element by element, without the code under test."""
    total = 0.0
    for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist()):
        z = beta * ((a - c) - (b - d))
        total += -math.log(1.0 / (1.0 + math.exp(-z)))
    return total / len(pc)


def test_loss_matches_independent_formula():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g, dtype=torch.float64) * 20 - 100 for _ in range(4))
    loss, m = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert loss.item() == pytest.approx(reference_dpo_loss(pc, pr, rc, rr, 0.1), abs=1e-9)
    margin = (0.1 * ((pc - rc) - (pr - rr))).mean().item()
    assert float(m["rewards/margin"]) == pytest.approx(margin, abs=1e-9)


def test_masked_positions_contribute_nothing_to_logps():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    targets = torch.randint(0, 11, (2, 6), generator=g)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    lp = sequence_logps(logits, targets, mask)
    manual = [sum(torch.log_softmax(logits[b, t], -1)[targets[b, t]].item() for t in range(6) if mask[b, t])
              for b in range(2)]
    assert lp.tolist() == pytest.approx(manual, abs=1e-5)
    changed = targets.clone()
    changed[0, 1], changed[1, 0] = (changed[0, 1] + 1) % 11, (changed[1, 0] + 3) % 11  # prompt positions
    assert torch.equal(sequence_logps(logits, changed, mask), lp)
    changed[0, 4] = (changed[0, 4] + 1) % 11  # a response position does count
    assert not torch.equal(sequence_logps(logits, changed, mask), lp)


def test_hh_and_ufb_formats_load(data_dir, tiny_base, ufb):
    from llmrecipe.checkpoint import load_model
    _, tok = load_model(tiny_base)
    hh = data_dir / "preference" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
    pairs, rep = load_pairs(str(hh), tok, 256, limit=50)
    assert rep.rows == 50 and rep.kept + rep.skipped + rep.truncated >= len(pairs) > 30
    assert parse_hh("\n\nHuman: hi\n\nAssistant: hello") == [{"role": "user", "content": "hi"},
                                                              {"role": "assistant", "content": "hello"}]
    pairs, rep = load_pairs(str(ufb), tok, 256, limit=20)
    assert len(pairs) > 10
    for k, batch in enumerate(([pairs[0]] * 3, pairs[:3])):  # one prompt three times, then three real pairs
        x, y, prefix = collate_pairs(batch, tok.eot_id)
        assert x.shape[0] == 6
        for i, p in enumerate(batch):  # labels are exactly the replies, chosen rows first
            n = len(p.prompt_ids)
            assert [t for t in y[i].tolist() if t != IGNORE] == p.chosen_ids
            assert [t for t in y[i + 3].tolist() if t != IGNORE] == p.rejected_ids
            if prefix is None:  # each reply's row holds its whole prompt
                assert x[i, :n].tolist() == p.prompt_ids == x[i + 3, :n].tolist()
                continue
            # the prompt once: the prefix row holds all but its last token, which opens both replies' rows
            kept = prefix.idx[i][prefix.key_mask[i].bool()].tolist()
            assert kept + [int(x[i, 0])] == p.prompt_ids and int(x[i + 3, 0]) == p.prompt_ids[-1]
        # shared exactly when it computes fewer positions (always, for one prompt repeated)
        replies = [(len(p.prompt_ids), len(r)) for p in batch for r in (p.chosen_ids, p.rejected_ids)]
        shared = 3 * (max(n for n, _ in replies) - 1) + 6 * max(m for _, m in replies)
        whole = 6 * (max(n + m for n, m in replies) - 1)
        assert (prefix is not None) == (shared < whole) and (k == 1 or prefix is not None)


def test_identical_and_overlong_pairs_are_dropped_and_counted(tiny_base, tmp_path):
    from llmrecipe.checkpoint import load_model
    _, tok = load_model(tiny_base)
    u = {"role": "user", "content": "Say something."}
    rows = [{"prompt": "p", "chosen": [u, {"role": "assistant", "content": "Yes."}],
             "rejected": [u, {"role": "assistant", "content": "Yes."}]},
            {"prompt": "p",
             "chosen": [{"role": "user", "content": "long " * 300}, {"role": "assistant", "content": "a"}],
             "rejected": [{"role": "user", "content": "long " * 300}, {"role": "assistant", "content": "b"}]},
            {"prompt": "p", "chosen": [u, {"role": "assistant", "content": "Good."}],
             "rejected": [u, {"role": "assistant", "content": "Bad."}]},
            {"prompt": "p", "chosen": "not a transcript"}]
    f = tmp_path / "prefs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, rep = load_pairs(str(f), tok, 128)
    assert (len(pairs), rep.skipped) == (1, 1)
    assert "dropped 1 identical pairs and 1 whose prompt fills the context" in str(rep)
    assert "prefs.jsonl, row 4: no 'rejected' field" in str(rep)
    with pytest.raises(DataError, match="row 4: no 'rejected' field"):
        load_pairs(str(f), tok, 128, strict=True)


@pytest.mark.parametrize("reference", ["adapter", "copy"])
def test_at_init_loss_is_log2_and_rewards_zero_then_a_step_raises_the_margin(tiny_base, ufb, tmp_path,
                                                                               reference):
    cfg = dpo_cfg(tiny_base, ufb, max_steps=1)
    cfg.reference = reference
    rt = setup("cpu")
    torch.manual_seed(0)
    stage = DPOStage(cfg, rt, tmp_path)
    batch = stage.batch(0, 0)
    loss, m = stage.loss(stage.model, batch)
    assert abs(loss.item() - math.log(2)) < 1e-6
    assert abs(m["rewards/chosen"]) < 1e-6 and abs(m["rewards/rejected"]) < 1e-6
    opt = make_optimizer(stage.model, cfg.train, rt.device)
    loss.backward()
    opt.step()
    _, after = stage.loss(stage.model, batch)
    assert after["rewards/margin"] > m["rewards/margin"] + 1e-4


def test_short_run_raises_reward_accuracy_and_precomputed_reference_agrees(tiny_base, ufb, tmp_path):
    run_dpo(dpo_cfg(tiny_base, ufb, max_steps=30), tmp_path / "live")
    cfg = dpo_cfg(tiny_base, ufb, max_steps=30)
    cfg.precompute_reference = True
    run_dpo(cfg, tmp_path / "cached")
    recs = [[json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("live", "cached")]
    assert [r["loss"] for r in recs[0]] == pytest.approx([r["loss"] for r in recs[1]], abs=1e-4)
    acc = [r["rewards/accuracy"] for r in recs[0]]
    assert acc[0] == 0.0 and sum(acc[-10:]) / 10 > 0.5, acc
    assert (tmp_path / "live" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "cached" / "reference_logps.safetensors").is_file()


def test_rpo_adds_the_chosen_answers_mean_token_nll(tiny_base, ufb, tmp_path):
    cfg = dpo_cfg(tiny_base, ufb, max_steps=1)
    cfg.rpo_alpha = 0.5
    torch.manual_seed(0)
    stage = DPOStage(cfg, setup("cpu"), tmp_path)
    batch = stage.batch(0, 0)
    n = len(batch[2])
    loss, m = stage.loss(stage.model, batch)
    # independently, from each pair's prompt + chosen reply as one plain row: per chosen answer, the mean
    # over its response tokens of -log p(token)
    from llmrecipe.chat import Encoded
    from llmrecipe.data.chat import collate
    pairs = stage.batches(0, 0)
    x, y = collate([Encoded(p.prompt_ids + p.chosen_ids, [IGNORE] * len(p.prompt_ids) + p.chosen_ids)
                    for p in pairs], stage.tokenizer.eot_id)
    logp = torch.log_softmax(stage.model(x)[0].float(), -1)
    nll = []
    for b in range(n):
        pos = (y[b] != IGNORE).nonzero().flatten()
        nll.append(-logp[b, pos, y[b, pos]].mean().item())
    assert float(m["nll_loss"]) == pytest.approx(sum(nll) / n, rel=1e-5)
    # DPO is log 2 at init
    assert loss.item() == pytest.approx(math.log(2) + 0.5 * float(m["nll_loss"]), rel=1e-5)
