import json
import pytest
import torch

from fp32 import assert_fp32_close
from llmrecipe.chat import IGNORE, encode_chat, render
from llmrecipe.checkpoint import load_model, save_hf
from llmrecipe.data.chat import collate, load_chat
from llmrecipe.data.sources import DataError
from llmrecipe.lora import (LoRAConfig, adapters_disabled, inject, merge, merged_copy, refresh_merged,
                            save_adapter)
from llmrecipe.tokenizer import load_from_dir
from llmrecipe.train.loop import TrainConfig
from llmrecipe.train.sft import SFTConfig, run_sft

# conftest's tiny_base: 2 layers x 64 wide, 256 positions (attention C + T, MLP 4C per layer)
BASE_REDUCTION = 2 * (5 * 64 + 256)

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4."}]


@pytest.fixture(scope="module")
def base_dir(tiny_base):
    return tiny_base


def test_template_round_trip_response_spans(data_dir, small_corpus):
    from llmrecipe.tokenizer import GPT2Tokenizer
    for tok in (GPT2Tokenizer(), load_from_dir(small_corpus)):
        enc = encode_chat(CONV, tok)
        spans = enc.response_spans
        assert [tok.decode(enc.ids[a:b - 1]) for a, b in spans] == ["Hello! How can I help?", "4."]
        assert all(enc.ids[b - 1] == tok.eot_id for a, b in spans)
        assert tok.decode(enc.ids) == render(CONV)
        gen = encode_chat(CONV[:2], tok, add_generation_prompt=True)
        assert tok.decode(gen.ids).endswith("<|assistant|>\n") and all(lab == IGNORE for lab in gen.labels)


def test_masked_positions_get_zero_gradient(base_dir):
    model, tok = load_model(base_dir)
    x, y = collate([encode_chat(CONV, tok), encode_chat(CONV[1:3], tok)], tok.eot_id)
    logits, _ = model(x)
    logits.retain_grad()
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1),
                                             ignore_index=IGNORE)
    loss.backward()
    g = logits.grad.abs().sum(-1)
    assert (g[y == IGNORE] == 0).all()
    assert (g[y != IGNORE] > 0).all()
    # the model's loss is this masked mean
    assert model(x, y)[1].item() == pytest.approx(loss.item(), abs=1e-6)


def test_merge_and_disable(base_dir):
    model, _ = load_model(base_dir)
    inject(model, LoRAConfig(r=4, alpha=8, dropout=0.0))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    model.eval()
    idx = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        with_adapter = model(idx)[0]
        base, _ = load_model(base_dir)
        with adapters_disabled(model):
            assert_fp32_close(model(idx)[0], base(idx)[0], BASE_REDUCTION, "adapter off")
        assert (with_adapter - base(idx)[0]).abs().max() > 1e-3
        assert_fp32_close(merge(model)(idx)[0], with_adapter, BASE_REDUCTION, "merged")


def test_merged_copy_follows_the_adapters(base_dir):
    """RL samples from a merged copy refreshed after each update: it computes what the adapted model does,
    and the adapted model itself keeps its base weights bit for bit (no merge/unmerge round trip)."""
    model, _ = load_model(base_dir)
    inject(model, LoRAConfig(r=4, alpha=8, dropout=0.0))
    base = {n: p.clone() for n, p in model.named_parameters() if "lora_" not in n}
    copy_ = merged_copy(model).eval()
    model.eval()
    idx = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        assert_fp32_close(copy_(idx)[0], model(idx)[0], BASE_REDUCTION, "fresh copy")
        for n, p in model.named_parameters():  # an update moves the adapters: the copy is stale ...
            if "lora_" in n:
                p.add_(torch.randn_like(p), alpha=0.05)
        assert (copy_(idx)[0] - model(idx)[0]).abs().max() > 1e-3
        refresh_merged(copy_, model)  # ... until refreshed
        assert_fp32_close(copy_(idx)[0], model(idx)[0], BASE_REDUCTION, "refreshed copy")
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if "lora_" not in n)


def test_peft_loads_our_adapter_onto_hf_export(base_dir, tmp_path):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    model, _ = load_model(base_dir)
    cfg = LoRAConfig(r=4, alpha=8, dropout=0.0)
    inject(model, cfg)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    save_adapter(tmp_path / "adapter", model, cfg, str(base_dir))
    base, _ = load_model(base_dir)
    save_hf(tmp_path / "hf", base)
    hf = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf"),
                                        tmp_path / "adapter").eval()
    idx = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        assert_fp32_close(hf(idx).logits, model.eval()(idx)[0], BASE_REDUCTION, "PEFT")
        reloaded, _ = load_model(base_dir, adapter=tmp_path / "adapter")
        assert_fp32_close(reloaded(idx)[0], model(idx)[0], BASE_REDUCTION, "reloaded")


def sft_cfg(base_dir, data, **train) -> SFTConfig:
    tc = dict(batch_size=4, grad_accum=1, max_steps=0, lr=1e-2, warmup_steps=0, schedule="constant",
              weight_decay=0.0, log_interval=1, eval_interval=0, save_interval=1000, seed=0)
    return SFTConfig(lora=LoRAConfig(r=8, alpha=16, dropout=0.0), train=TrainConfig(**{**tc, **train}),
                     base=str(base_dir), data=str(data))


def mean_chat_loss(model_dir, data) -> float:
    model, tok = load_model(model_dir)
    examples, _ = load_chat(str(data), tok, model.config.block_size)
    with torch.no_grad():
        return sum(model.eval()(*collate([e], tok.eot_id))[1].item() for e in examples) / len(examples)


def test_sft_loss_falls_on_real_chat_sample(base_dir, data_dir, tmp_path):
    data = data_dir / "sft" / "ultrachat_200k_sample20.jsonl"
    run_sft(sft_cfg(base_dir, data, max_steps=60, batch_size=4, lr=1e-2), tmp_path)
    before, after = mean_chat_loss(base_dir, data), mean_chat_loss(tmp_path, data)
    assert after < before - 0.1, (before, after)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(files)
    assert "model.safetensors" not in files


def test_only_lora_parameters_change(base_dir, data_dir, tmp_path):
    from llmrecipe.runtime import setup
    from llmrecipe.train.loop import train
    from llmrecipe.train.sft import SFTStage

    cfg = sft_cfg(base_dir, data_dir / "sft" / "ultrachat_200k_sample20.jsonl", max_steps=2, lr=1e-2)
    rt = setup("cpu")
    stage = SFTStage(cfg, rt)
    before = {n: p.detach().clone() for n, p in stage.model.named_parameters()}
    train(stage, cfg.train, rt, tmp_path, {})
    for n, p in stage.model.named_parameters():
        if "lora_" in n:
            assert p.requires_grad and not torch.equal(p, before[n]), n
        else:
            assert not p.requires_grad and torch.equal(p, before[n]), n


def test_bad_rows_are_skipped_and_named_or_rejected_when_strict(base_dir, tmp_path):
    _, tok = load_model(base_dir)
    rows = [{"messages": CONV}, {"prompt": "no messages"}, {"messages": [{"role": "bot", "content": "x"}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
            {"messages": [{"role": "user", "content": "only a question"}]}, {"messages": CONV[1:3]}]
    f = tmp_path / "chat.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, rep = load_chat(str(f), tok, 128)
    assert (rep.rows, rep.kept, rep.skipped, len(examples)) == (6, 2, 4, 2)
    text = str(rep)
    for why in ("line 2: no conversation (columns: prompt); expected messages",
                "line 3, field 'messages'[0]: unknown role 'bot'",
                "empty assistant turn", "line 5, field 'messages': no assistant turn"):
        assert why in text.replace("row", "line"), text
    with pytest.raises(DataError, match="chat.jsonl, row 2: no conversation"):
        load_chat(str(f), tok, 128, strict=True)
    lengths = sorted(len(encode_chat(m, tok).ids) for m in (CONV, CONV[1:3]))
    # the long conversation loses 2 tokens, the short one fits
    examples, rep = load_chat(str(f), tok, lengths[1] - 3)
    assert (rep.truncated, rep.kept, len(examples[0].ids)) == (1, 2, lengths[1] - 2)


def test_packing_keeps_every_token_and_label(base_dir):
    from llmrecipe.data.chat import pack
    _, tok = load_model(base_dir)
    examples = [encode_chat(CONV[1:3], tok), encode_chat(CONV, tok), encode_chat(CONV[3:], tok)] * 4
    longest = max(len(e.ids) for e in examples)
    packed = pack(examples, longest * 2)
    assert len(packed) < len(examples) and all(len(p.ids) <= longest * 2 + 1 for p in packed)
    assert sum((p.ids for p in packed), []) == sum((e.ids for e in examples), [])
    assert sum((p.labels for p in packed), []) == sum((e.labels for e in examples), [])


def test_packed_rows_give_the_padded_batchs_loss_and_gradients(base_dir, data_dir):
    """collate_packed's rows (sequences side by side, each attending only to itself) against collate's
    right-padded rows: fewer rows, every token and label kept, the same loss and LoRA gradients."""
    from llmrecipe.data.chat import collate_packed
    model, tok = load_model(base_dir)
    # real conversations (most fill the 256-token context) and short ones that pack beside them
    examples, _ = load_chat(str(data_dir / "sft" / "ultrachat_200k_sample20.jsonl"), tok, 256, limit=16)
    examples += [encode_chat(CONV[1:3], tok), encode_chat(CONV, tok), encode_chat(CONV[3:], tok)] * 3
    x, y, positions, segments = collate_packed(examples, tok.eot_id)
    xp, yp = collate(examples, tok.eot_id)
    assert x.size(0) < xp.size(0) and x.size(1) == xp.size(1)
    assert sorted(x[y != IGNORE].tolist()) == sorted(xp[yp != IGNORE].tolist())
    for i, e in enumerate(examples):  # each one whole, in one row, at positions 0..n-1
        r, cols = (segments == i).nonzero(as_tuple=True)
        assert r.unique().numel() == 1 and x[r, cols].tolist() == e.ids[:-1]
        assert positions[r, cols].tolist() == list(range(len(e.ids) - 1))
    inject(model, LoRAConfig(r=4, alpha=8, dropout=0.0))  # no dropout: both forwards see the same weights
    for name, p in model.named_parameters():
        if "lora_B" in name:  # a LoRA that does something, so its A gets a gradient too
            torch.nn.init.normal_(p, std=0.05)
    params = [p for p in model.parameters() if p.requires_grad]
    packed = model(x, y, select=y != IGNORE, positions=positions, segments=segments)[1]
    padded = model(xp, yp, select=yp != IGNORE)[1]
    assert_fp32_close(packed, padded, BASE_REDUCTION, "packed loss")
    for g, h in zip(torch.autograd.grad(packed, params), torch.autograd.grad(padded, params)):
        assert_fp32_close(g, h, BASE_REDUCTION * 16, "packed gradient")


def test_chat_command_answers_through_the_template(base_dir):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "llmrecipe", "chat", "--model", str(base_dir),
                        "--max-new-tokens", "8", "--system", "Be brief."],
                       input="Hello\n/reset\nAgain\n\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("assistant> ") == 2


def _sft_step_gradients(cfg: SFTConfig) -> tuple[dict[str, torch.Tensor], float]:
    """The loop's own accumulated LoRA gradients of step 0 (captured where the optimizer would step)."""
    from llmrecipe.runtime import setup
    from llmrecipe.train.loop import StepBatches, _step
    from llmrecipe.train.sft import SFTStage

    torch.manual_seed(0)
    stage = SFTStage(cfg, setup("cpu", "float32"))
    grads = {}

    class Capture:
        def step(self):
            grads.update({n: p.grad.clone() for n, p in stage.model.named_parameters() if p.requires_grad})

        def zero_grad(self, set_to_none=True):
            stage.model.zero_grad(set_to_none=set_to_none)

    loader = StepBatches(stage, cfg.train.grad_accum, stage.rt.device, 1)
    batches, units, _ = loader.get(0)
    loader.close()
    lens = [int((b[1] != IGNORE).sum()) for b in batches]
    metrics = _step(stage, stage.model, stage.model, Capture(), batches, units, cfg.train, stage.rt)
    return grads, float(metrics["loss"]), lens


def test_accumulated_sft_loss_is_the_mean_over_all_response_tokens(base_dir, data_dir):
    """Four micro-batches of one conversation each = one batch of four: every response token weighs the same,
    however the tokens are split between micro-batches (a mean of per-micro-batch means would not)."""
    data = data_dir / "sft" / "ultrachat_200k_sample20.jsonl"
    (ga, la, _), (gb, lb, lens) = (_sft_step_gradients(sft_cfg(base_dir, data, batch_size=4, grad_accum=1)),
                                   _sft_step_gradients(sft_cfg(base_dir, data, batch_size=1, grad_accum=4)))
    assert max(lens) > 2 * min(lens), lens  # the micro-batches differ enough for the weighting to matter
    n = sum(lens) * 64  # each gradient sums over the response tokens x the model width
    assert la == pytest.approx(lb, rel=1e-5)
    for k in ga:
        assert_fp32_close(gb[k], ga[k], n, k)
