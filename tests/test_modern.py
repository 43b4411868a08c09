"""The modern switches of the one model (rotary, RMSNorm, QK-norm, ReLU²/SwiGLU, no biases, untied head,
soft-capping): each combination computes the same with and without the KV cache, in a left-padded batch and
through a shared prompt; trains, resumes exactly, takes LoRA; and the Llama/Qwen3 combination exports as
the stock transformers architecture with our logits."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from fp32 import assert_fp32_close
from llmrecipe.model import GPT, GPTConfig, KVCache, Prefix, stock_architecture
from test_train import losses, simulate_kill, small_cfg

# the longest sum on the path: the MLP's 4 x 64 (or SwiGLU's 160) inputs, times the layers
REDUCTION = 4 * 4 * 64

MODERN = dict(position="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu", mlp_hidden=160, bias=False,
              tie_embeddings=False)
MATRIX = {
    "gpt2": {},
    "rope": dict(position="rope"),
    "rmsnorm+qk_norm": dict(norm="rmsnorm", qk_norm=True),
    "relu2+untied+nobias": dict(mlp="relu2", tie_embeddings=False, bias=False),
    "softcap+swiglu": dict(logit_softcap=15.0, mlp="swiglu"),
    "qwen3": MODERN,
    "llama": {**MODERN, "qk_norm": False, "tie_embeddings": True},
}


def model_of(switches: dict, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    m = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=300, block_size=64, **switches)).eval()
    with torch.no_grad():  # norms away from their init, so a misplaced weight shows
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return m


def trains_and_resumes_exactly(cfg, tmp_path):
    """Pre-train 8 steps straight, and again killed after step 6 (last checkpoint 4) then resumed: the same
    losses, falling, and the same final weights bit for bit. Returns the straight run's folder."""
    from llmrecipe.train.pretrain import run_pretrain

    straight = tmp_path / "straight"
    run_pretrain(cfg, straight)
    killed = simulate_kill(straight, tmp_path / "killed", last_checkpoint=4, logged=6, final=8)
    run_pretrain(cfg, killed, resume=True)
    assert losses(killed) == losses(straight) and losses(straight)[-1] < losses(straight)[0]
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    return straight


@pytest.mark.parametrize("name", MATRIX)
@torch.no_grad()
def test_cache_batch_and_shared_prompt_compute_the_plain_forward(name):
    m = model_of(MATRIX[name])
    x = torch.randint(0, 300, (3, 40))
    full = m(x)[0]
    # prefill 25 tokens, then one at a time through the KV cache
    cache = KVCache(m.config, 3, 64, "cpu")
    steps = [m.logits(m.hidden(x[:, :25], cache=cache))] + [m.logits(m.hidden(x[:, t:t + 1], cache=cache))
                                                            for t in range(25, 40)]
    assert_fp32_close(torch.cat(steps, 1), full, REDUCTION, "KV cache")
    # a row left-padded in a batch: its own positions and a key mask
    pad = 7
    padded = torch.cat([torch.zeros(1, pad, dtype=torch.long), x[:1]], 1)
    km = torch.cat([torch.zeros(1, pad), torch.ones(1, 40)], 1).long()
    pos = (km.cumsum(-1) - 1).clamp(min=0)
    h = m.hidden(padded, positions=pos, key_mask=km)
    assert_fp32_close(m.logits(h)[:, pad:], full[:1], REDUCTION, "left padding")
    # two rows continuing one shared prompt (DPO's chosen/rejected, RL's answers)
    prompt, rows = x[:1, :20], x[:2, 20:]
    select = torch.ones_like(rows, dtype=torch.bool)
    shared = m(rows, select=select, prefix=Prefix(prompt, torch.ones_like(prompt), torch.tensor([0, 0])))[0]
    plain = m(torch.cat([prompt.expand(2, -1), rows], 1))[0][:, 20:].reshape(-1, 300)
    assert_fp32_close(shared, plain, REDUCTION, "shared prompt")


def test_the_defaults_are_gpt2():
    cfg = GPTConfig()
    assert cfg.classic and {n for n, _ in GPT(dataclasses.replace(cfg, n_layer=1, n_embd=64, n_head=2))
                            .named_parameters()} >= {"transformer.wpe.weight", "transformer.h.0.ln_1.bias"}
    with pytest.raises(ValueError, match="model.mlp = 'geglu': must be one of gelu, relu2, swiglu"):
        GPT(GPTConfig(n_layer=1, n_embd=64, n_head=2, mlp="geglu"))


@pytest.mark.parametrize("name", ["qwen3", "relu2+untied+nobias"])
def test_modern_models_pretrain_resume_exactly_and_take_lora(name, small_corpus, tmp_path):
    from llmrecipe.checkpoint import load_model
    from llmrecipe.lora import LoRAConfig
    from llmrecipe.train.loop import TrainConfig
    from llmrecipe.train.sft import SFTConfig, run_sft

    cfg = small_cfg(small_corpus, max_steps=8, save_interval=4, keep_checkpoints=5)
    cfg.model = dataclasses.replace(cfg.model, **{**MATRIX[name], "mlp_hidden": 0})
    straight = trains_and_resumes_exactly(cfg, tmp_path)
    model, _ = load_model(straight)
    assert model.config == cfg.model  # the switches travel with the model folder
    # LoRA SFT on it, then the adapter chain loads merged
    from conftest import DATA
    chat = DATA / "sft" / "ultrachat_200k_sample20.jsonl"
    if not chat.is_file():
        pytest.skip(f"{chat} not found")
    run_sft(SFTConfig(lora=LoRAConfig(r=4, alpha=8, dropout=0.0),
                      train=TrainConfig(batch_size=2, grad_accum=1, max_steps=3, lr=1e-2, warmup_steps=0,
                                        schedule="constant", log_interval=1, eval_interval=0,
                                        save_interval=100),
                      base=str(straight), data=str(chat)), tmp_path / "sft")
    merged, _ = load_model(tmp_path / "sft", merge_adapters=True)
    plain, _ = load_model(straight)
    x = torch.randint(0, 512, (1, 30))
    assert not torch.equal(merged(x)[0], plain(x)[0])  # the adapter changed the function


@pytest.mark.parametrize("name,arch", [("qwen3", "Qwen3ForCausalLM"), ("llama", "LlamaForCausalLM")])
def test_the_modern_model_exports_as_a_stock_architecture(name, arch, tmp_path):
    transformers = pytest.importorskip("transformers")
    from llmrecipe.checkpoint import save_hf

    m = model_of(MATRIX[name])
    save_hf(tmp_path, m)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == arch
    x = torch.randint(0, 300, (4, 48))
    with torch.no_grad():
        assert_fp32_close(hf(x).logits, m(x)[0], REDUCTION, arch)
        ours = x[:, :8]
        for _ in range(12):  # greedy continuation, token by token, from both
            ours = torch.cat([ours, m(ours)[0][:, -1:].argmax(-1)], 1)
        theirs = hf.generate(x[:, :8], max_new_tokens=12, do_sample=False, min_new_tokens=12,
                             pad_token_id=0)
    assert torch.equal(ours, theirs)


def test_a_switch_no_stock_architecture_has_is_a_clear_export_error(tmp_path):
    from llmrecipe.checkpoint import save_hf

    with pytest.raises(ValueError, match=r"no stock transformers architecture has this model's mlp: 'relu2'"):
        save_hf(tmp_path, model_of({**MODERN, "mlp": "relu2", "mlp_hidden": 0}))


def test_the_gguf_writer_refuses_what_no_stock_architecture_expresses(tmp_path):
    pytest.importorskip("gguf")
    from llmrecipe.gguf_file import write_gguf

    with pytest.raises(ValueError, match=r"no stock transformers architecture has this model's mlp: 'relu2'"):
        write_gguf(tmp_path / "m.gguf", model_of({**MODERN, "mlp": "relu2", "mlp_hidden": 0}), tok=None)
    assert not (tmp_path / "m.gguf").exists()


def test_newton_schulz_orthogonalises_and_muon_trains_resumes_exactly(small_corpus, tmp_path):
    from llmrecipe.train.muon import orthogonalise
    from llmrecipe.train.pretrain import run_pretrain

    torch.manual_seed(0)
    for shape in ((64, 256), (256, 64)):  # wide and tall: every singular value pushed near 1
        s = torch.linalg.svdvals(orthogonalise(torch.randn(shape)))
        assert 0.6 < float(s.min()) and float(s.max()) < 1.25, (shape, s.min(), s.max())
    s = torch.linalg.svdvals(orthogonalise(torch.randn(96, 96)))  # square: all but the near-null directions
    assert 0.6 < float(s.quantile(0.1)) and float(s.max()) < 1.25, s
    cfg = small_cfg(small_corpus, max_steps=8, save_interval=4, keep_checkpoints=5, optimizer="muon",
                    muon_lr=0.02)
    cfg.model = dataclasses.replace(cfg.model, **{**MODERN, "mlp_hidden": 0})
    straight = trains_and_resumes_exactly(cfg, tmp_path)
    adamw = small_cfg(small_corpus, max_steps=8)
    adamw.model = cfg.model
    run_pretrain(adamw, tmp_path / "adamw")
    assert losses(tmp_path / "adamw") != losses(straight)  # the switch changes the optimizer


def test_a_model_folder_without_a_preset_matches_its_own_architecture_only():
    """modern-tiny has tiny's shape, modern-124m gpt2-124m's: the switches must tell them apart, or a model
    with no recorded preset would be refused as ambiguous (or worse, fine-tuned with the other's settings)."""
    from llmrecipe.config import choose_preset, load_preset

    for classic, modern in (("tiny", "modern-tiny"), ("gpt2-124m", "modern-124m")):
        for name in (classic, modern):
            model = dataclasses.asdict(GPTConfig(**load_preset(name)["model"]))
            assert choose_preset(None, model, None, "x")[0] == name
    old = {k: v for k, v in dataclasses.asdict(GPTConfig(**load_preset("tiny")["model"])).items()
           if k in ("n_layer", "n_head", "n_embd", "vocab_size", "block_size")}  # a model.json from before
    assert choose_preset(None, old, None, "x")[0] == "tiny"


def test_modern_124m_is_gpt2_small_budget_as_a_stock_qwen3():
    from llmrecipe.train import stage_config

    def count(preset):
        with torch.device("meta"):
            return sum(p.numel() for p in GPT(stage_config("pretrain", preset).model).parameters())

    classic, modern = count("gpt2-124m"), count("modern-124m")
    assert abs(modern / classic - 1) < 0.01, (classic, modern)
    cfg = stage_config("pretrain", "modern-124m")
    assert stock_architecture(cfg.model) == "Qwen3ForCausalLM"
    assert (cfg.train.optimizer, cfg.train.schedule, cfg.model.block_size) == ("muon", "wsd", 1024)


@pytest.mark.parametrize("switches", [{}, dict(logit_softcap=15.0, tie_embeddings=False)],
                         ids=["gpt2", "softcap+untied"])
def test_chunked_cross_entropy_gives_the_same_loss_and_gradients(switches):
    """ce_chunk: the loss in chunks with its gradient computed in the forward pass equals the one-piece
    loss, and every parameter's gradient, within fp32 rounding (ignored targets and a ragged last chunk)."""
    model = model_of(switches).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 300, (3, 40), generator=g)
    y = torch.randint(0, 300, (3, 40), generator=g)
    y[0, :7] = -100  # e.g. SFT's prompt positions
    grads = {}
    for chunk in (0, 16):
        model.zero_grad()
        logits, loss = model(x, y, ce_chunk=chunk)
        assert (logits is None) == (chunk > 0)
        loss.backward()
        grads[chunk] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    assert_fp32_close(grads[16][0], grads[0][0], 300, "loss")  # a softmax over 300 tokens
    for n, ref in grads[0][1].items():  # ... and sums over the 120 positions and the blocks
        assert_fp32_close(grads[16][1][n], ref, REDUCTION, n)
    with torch.no_grad():  # evaluation: the ordinary path, logits returned
        assert model(x, y, ce_chunk=16)[0] is not None


def test_chunked_cross_entropy_is_refused_where_it_would_do_nothing():
    from llmrecipe.config import apply_overrides
    from llmrecipe.train import stage_config

    assert apply_overrides(stage_config("pretrain", "tiny"), {"ce_chunk": "4096"}).train.ce_chunk == 4096
    for stage in ("sft", "dpo", "rl"):
        with pytest.raises(ValueError, match="train.ce_chunk = 64: applies to pre-training only"):
            apply_overrides(stage_config(stage, "tiny"), {"train.ce_chunk": "64"})


def test_pretraining_with_chunked_cross_entropy_follows_the_same_losses(small_corpus, tmp_path):
    from llmrecipe.train.pretrain import run_pretrain

    runs = {}
    for chunk in (0, 100):
        cfg = small_cfg(small_corpus, max_steps=6)
        cfg.train.ce_chunk = chunk
        run_pretrain(cfg, tmp_path / str(chunk))
        runs[chunk] = losses(tmp_path / str(chunk))
    assert len(runs[0]) == len(runs[100]) > 0
    for a, b in zip(runs[0], runs[100]):
        assert abs(a - b) < 1e-4 * a, (runs[0], runs[100])
