import math

import pytest
import torch

from fp32 import assert_fp32_close
from llmrecipe.model import GPT, GPTConfig, KVCache, from_hf_state_dict, hf_config, sample, to_hf_state_dict

SMALL = GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=300, block_size=64)
# the longest chain of fp32 sums a logit goes through: per layer, attention (C, then T keys) and the MLP (4C)
REDUCTION = SMALL.n_layer * (5 * SMALL.n_embd + SMALL.block_size)


def test_gpt2_124m_has_exactly_gpt2_small_parameter_count():
    with torch.device("meta"):
        model, unpadded = GPT(GPTConfig()), GPT(GPTConfig(pad_vocab_to=1))
    assert unpadded.num_params() == 124_439_808  # as GPT-2 small is quoted
    assert model.transformer.wte.weight.shape[0] == 50_304  # 50,257 padded to a multiple of 64
    assert model.num_params() == 124_439_808 + 47 * 768
    assert model.lm_head.weight is model.transformer.wte.weight


def test_padded_vocabulary_rows_are_invisible():
    """Logits, loss and samples see only the real vocabulary; the padded rows get no gradient."""
    torch.manual_seed(0)
    model = GPT(SMALL)  # 300 tokens → 320 rows
    assert model.lm_head.weight.shape[0] == 320
    idx = torch.randint(0, 300, (2, 16))
    logits, loss = model(idx, idx)
    assert logits.shape[-1] == 300
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 300), idx.reshape(-1))
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    loss.backward()
    assert model.lm_head.weight.grad[300:].abs().max().item() == 0.0
    with torch.no_grad():  # make a padded row the most likely token: sampling must still never return it
        model.lm_head.weight[310] = 10 * model.hidden(idx)[0, -1]
    out = _engine(model, eot=299).generate([idx[0].tolist()], 20, temperature=1.0, seed=0)[0]
    assert out and max(out) < 300


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, vocab_size=1000, block_size=32))
    assert model.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    # the residual projections scaled by 1/sqrt(2 x n_layer), as GPT-2 does
    assert model.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16),
                                                                                 rel=0.05)
    assert model.transformer.h[0].attn.c_attn.bias.abs().max().item() == 0.0


def test_kv_cache_step_by_step_equals_full_forward():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    idx = torch.randint(0, SMALL.vocab_size, (2, 20))
    full, _ = model(idx)
    cache = KVCache(SMALL, 2, 20, "cpu")
    steps = [model(idx[:, :5], cache=cache)[0]]  # a prefill of 5, then one token at a time
    for t in range(5, 20):
        steps.append(model(idx[:, t:t + 1], cache=cache)[0])
    assert_fp32_close(torch.cat(steps, dim=1), full, REDUCTION, "KV cache")


def test_left_padded_batch_matches_unpadded():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    seq = torch.randint(0, SMALL.vocab_size, (1, 7))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), seq], dim=1)
    mask = torch.tensor([[0, 0, 0] + [1] * 7])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out, _ = model(padded, positions=positions, key_mask=mask)
    ref, _ = model(seq)
    assert_fp32_close(out[:, 3:], ref, REDUCTION, "left padding")


def test_prefix_forward_equals_the_concatenated_rows_in_logits_and_gradients():
    """Shared prompts computed once (model.Prefix, data.chat.collate_shared) against each prompt + reply as
    its own row: the same logits at the reply tokens, the same gradient in every weight, with prompts of
    one token (an empty prefix row), replies of one token, and extra prefix rows read through `select`."""
    import random

    from llmrecipe.chat import IGNORE, Encoded
    from llmrecipe.data.chat import collate, collate_shared

    torch.manual_seed(0)
    rnd = random.Random(0)
    model = GPT(SMALL)
    prompts = [[rnd.randrange(300) for _ in range(n)] for n in (1, 9, 23, 4)]
    replies = [(i % 4, [rnd.randrange(300) for _ in range(rnd.randint(1, 15))]) for i in range(10)]
    x, y, prefix = collate_shared(prompts, replies, pad_id=0)
    assert x.size(0) == 10 and prefix.idx.shape == (4, 22) and x.size(1) == max(len(r) for _, r in replies)
    extra = torch.randint(0, 300, (2, 30))  # two whole sequences no reply continues, 26 and 30 tokens long
    real = (torch.arange(30) < torch.tensor([[26], [30]])).long()
    prefix = prefix.with_rows(extra, real, real.bool() & (torch.arange(30) % 3 == 0), pad_id=0)
    shared, _ = model(x, select=y != IGNORE, prefix=prefix)
    xs, ys = collate([Encoded(prompts[o] + r, [IGNORE] * len(prompts[o]) + r) for o, r in replies], 0)
    plain, _ = model(xs, select=ys != IGNORE)
    whole, _ = model(extra)
    want = torch.cat([plain, whole[prefix.select[4:]]])
    assert shared.shape == want.shape
    assert_fp32_close(shared, want, REDUCTION, "prefix logits")
    params = list(model.parameters())
    w = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    for g, h, (name, p) in zip(torch.autograd.grad((shared * w).sum(), params),
                               torch.autograd.grad((want * w).sum(), params), model.named_parameters()):
        assert_fp32_close(g, h, REDUCTION * 16, f"prefix gradient of {name}")
    with pytest.raises(ValueError, match="takes `select`"):
        model(x, prefix=prefix)


def test_hf_gpt2_loaded_into_ours_gives_same_logits():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(SMALL))).eval()
    ours = from_hf_state_dict(hf.state_dict(), SMALL).eval()
    idx = torch.randint(0, SMALL.vocab_size, (2, 16))
    with torch.no_grad():
        assert_fp32_close(ours(idx)[0], hf(idx).logits, REDUCTION, "HF → ours")
        back = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(SMALL))).eval()
        back.load_state_dict(to_hf_state_dict(ours), strict=False)
        assert_fp32_close(back(idx).logits, hf(idx).logits, REDUCTION, "ours → HF")


def test_sampling_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert sample(logits, temperature=0).item() == 0
    g = torch.Generator().manual_seed(0)
    draws = {sample(logits, 1.0, top_k=2, generator=g).item() for _ in range(200)}
    assert draws == {0, 1}
    # top_p=0.7: p = softmax = [.64, .24, .09, ...]; the smallest prefix reaching 0.7 is tokens {0, 1}
    draws = {sample(logits, 1.0, top_p=0.7, generator=g).item() for _ in range(200)}
    assert draws == {0, 1}


def test_sampling_draws_from_the_softmax():
    """Inverse-CDF sampling draws each token with its softmax probability (within 5 binomial standard
    errors over 200,000 draws), and never a token the filters or -inf removed, even at the vocabulary's
    end."""
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0, float("-inf")]]).repeat(200_000, 1)
    g = torch.Generator().manual_seed(0)
    n = logits.size(0)
    freq = torch.bincount(sample(logits, 1.0, generator=g).view(-1), minlength=5).double() / n
    p = torch.softmax(logits[0].double(), -1)
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt()).all(), (freq, p)
    assert freq[4] == 0
    t = torch.softmax(logits[0].double() / 0.5, -1)  # temperature sharpens: p ∝ exp(logit / T)
    freq = torch.bincount(sample(logits, 0.5, generator=g).view(-1), minlength=5).double() / n
    assert ((freq - t).abs() <= 5 * (t * (1 - t) / n).sqrt()).all(), (freq, t)
    ends = sample(torch.tensor([[5.0, 0.0, 0.0, 9.0]]).repeat(20_000, 1), 1.0, top_k=1, generator=g)
    assert (ends == 3).all()


def test_selected_logits_and_loss_equal_the_full_forwards():
    """`select` keeps some positions' logits: the same numbers as the full forward's, and the same loss as
    targets masked with -100 (what SFT, DPO and RL rely on to skip the prompt's LM head)."""
    torch.manual_seed(0)
    model = GPT(SMALL)
    idx = torch.randint(0, 300, (3, 40))
    targets = torch.randint(0, 300, (3, 40))
    keep = torch.rand(3, 40) < 0.4
    full, _ = model(idx)
    part, _ = model(idx, select=keep)
    assert part.shape == (int(keep.sum()), 300)
    assert_fp32_close(part, full[keep], REDUCTION, "selected logits")
    _, loss_all = model(idx, targets.masked_fill(~keep, -100))
    _, loss_sel = model(idx, targets, select=keep)
    assert_fp32_close(loss_sel, loss_all, REDUCTION, "selected loss")


def _engine(model, eot: int):
    """The one sampling path (generate, chat, eval, serve, RL) over a bare model; it needs only the EOT id."""
    from types import SimpleNamespace

    from llmrecipe.engine import Engine
    from llmrecipe.runtime import setup

    return Engine(model, SimpleNamespace(eot_id=eot), setup("cpu", "float32"))


def test_generation_stops_at_the_end_of_text_token():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    greedy = _engine(model, eot=299).generate([[1, 2, 3]], 10, temperature=0)[0]
    assert len(greedy) == 10 and 299 not in greedy
    first = greedy[0]
    assert _engine(model, eot=first).generate([[1, 2, 3]], 10, temperature=0) == [[]]  # EOT ends the row
