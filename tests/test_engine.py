import torch

from llmrecipe.checkpoint import load_model
from llmrecipe.engine import Engine
from llmrecipe.runtime import setup


def engine(tiny_base, batch_size=8) -> Engine:
    model, tok = load_model(tiny_base)
    return Engine(model, tok, setup("cpu"), batch_size)


def test_batched_generation_equals_one_at_a_time(tiny_base):
    e = engine(tiny_base)
    prompts = [e.tok.encode(t) for t in ("The", "In the beginning of the year, the", "A cat", "Water is")]
    batched = e.generate(prompts, 12)
    alone = [e.generate([p], 12)[0] for p in prompts]
    assert batched == alone and all(len(o) > 0 for o in batched)
    # a prompt asked several times is prefilled once and its cache copied: greedy rows equal it alone
    twice = e.generate([prompts[1], prompts[0], prompts[1], prompts[1]], 12)
    assert twice == [alone[1], alone[0], alone[1], alone[1]]
    # sampled decoding is reproducible from its seed
    assert e.generate(prompts, 8, temperature=1.0, seed=3) == e.generate(prompts, 8, temperature=1.0, seed=3)


def test_stop_strings_cut_the_output(tiny_base):
    e = engine(tiny_base)
    p = [e.tok.encode("The people of the")]
    full = e.tok.decode(e.generate(p, 30)[0])
    stop = full[len(full) // 2: len(full) // 2 + 3]
    cut = e.tok.decode(e.generate(p, 30, stop=[stop])[0])
    assert stop not in cut and full.startswith(cut) and len(cut) < len(full)
    assert len(e.generate(p, 5)[0]) <= 5


def test_scores_match_a_full_forward_and_truncate_from_the_left(tiny_base):
    e = engine(tiny_base, batch_size=3)
    reqs = [(e.tok.encode("The cat sat on"), e.tok.encode(" the mat")),
            (e.tok.encode("Hello"), e.tok.encode(" world")),
            (e.tok.encode("x " * 400), e.tok.encode(" end"))]  # longer than the 256 context
    got = e.score(reqs)
    for (ctx, cont), s in zip(reqs, got):
        full = (ctx + cont)[-(e.block + 1):]
        with torch.no_grad():
            logp = torch.log_softmax(e.model(torch.tensor([full[:-1]]))[0][0], -1)
        pos = range(len(full) - 1 - len(cont), len(full) - 1)
        want = sum(logp[t, full[t + 1]].item() for t in pos)
        assert abs(s.logprob - want) < 1e-4 and s.n_tokens == len(cont)
        assert s.greedy == all(logp[t].argmax().item() == full[t + 1] for t in pos)
    lp = e.next_token_logprobs([reqs[0][0], reqs[1][0]], [reqs[0][1][0], reqs[1][1][0]])
    assert abs(lp[0, 0].item() - e.score([(reqs[0][0], reqs[0][1][:1])])[0].logprob) < 1e-4
