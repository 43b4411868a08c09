"""GPT-2, the whole model in one file, with the switches of the modern recipe.

Module names follow OpenAI/Hugging Face GPT-2 (transformer.wte, h.N.attn.c_attn, ...) so that converting
to and from `transformers` is a transpose of the Conv1D weights and LoRA keys match PEFT's. The defaults are
GPT-2's, bit for bit; the switches (rotary positions, RMSNorm, QK-norm, ReLU² or SwiGLU, no biases, an
untied head, logit soft-capping) are those of nanochat and the modded-nanogpt records, and one combination —
rope + rmsnorm + qk_norm + swiglu, no biases — is exactly Qwen3's, so it exports as a stock architecture.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block (n_embd must divide by it)
    n_embd: int = 768  # width of the residual stream
    vocab_size: int = 50257  # tokens the model predicts (the tokenizer's; must hold all its ids)
    block_size: int = 1024  # context length in tokens (learned positions)
    dropout: float = 0.0  # on attention, MLP and embeddings; 0 for pre-training at this scale
    # The embedding / LM head get vocab_size rounded up to a multiple of this many rows (50,257 → 50,304, as
    # nanoGPT and llm.c do): matmul kernels tile dimensions in multiples of 64, and an odd 50,257 costs the
    # largest matmul of the model ~25% of its speed on tensor cores. The extra rows are never a target nor an
    # input, and every output (logits, sampling, scoring, the HF export) is cut back to vocab_size.
    pad_vocab_to: int = 64
    position: str = "learned"  # learned: GPT-2's position table / rope: rotary, applied to q and k
    rope_theta: float = 10000.0  # rotary base frequency
    norm: str = "layernorm"  # layernorm / rmsnorm (with a weight, as Llama and Qwen3)
    norm_eps: float = 1e-5  # added to the variance in every norm
    qk_norm: bool = False  # RMSNorm of each head's queries and keys before attention (Qwen3, OLMo 2)
    mlp: str = "gelu"  # gelu (tanh approximation, GPT-2) / relu2 (ReLU squared) / swiglu (SiLU-gated)
    mlp_hidden: int = 0  # MLP width; 0: 4 x n_embd (a SwiGLU of 8/3 x n_embd has the same parameters)
    bias: bool = True  # biases in the linear layers and LayerNorms
    tie_embeddings: bool = True  # the LM head shares the token embedding's weights
    logit_softcap: float = 0.0  # 0: off; else logits = cap x tanh(logits / cap) (Gemma 2, nanochat)

    @property
    def hidden_mlp(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd

    @property
    def classic(self) -> bool:
        """GPT-2 itself (what GPT2LMHeadModel and llama.cpp's gpt2 architecture express)."""
        return (self.position, self.norm, self.qk_norm, self.mlp, self.bias, self.tie_embeddings,
                self.logit_softcap, self.mlp_hidden) == ("learned", "layernorm", False, "gelu", True, True,
                                                          0.0, 0)

    def check(self) -> None:
        for field, value, allowed in (("position", self.position, ("learned", "rope")),
                                      ("norm", self.norm, ("layernorm", "rmsnorm")),
                                      ("mlp", self.mlp, ("gelu", "relu2", "swiglu"))):
            if value not in allowed:
                raise ValueError(f"model.{field} = {value!r}: must be one of {', '.join(allowed)}")
        if self.position == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("model.position = rope needs an even head size (n_embd / n_head)")

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.pad_vocab_to)
        return -(-self.vocab_size // m) * m

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Pre-allocated keys/values for incremental decoding; `length` is how many positions are filled."""

    def __init__(self, cfg: GPTConfig, batch: int, max_len: int, device, dtype=torch.float32):
        hd = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, batch, cfg.n_head, max_len, hd)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values; all of them so far, in the caller's dtype (the cache may be
        kept in another)."""
        t0, t1 = self.length, self.length + k.size(2)
        if t1 > self.k.size(3):
            raise ValueError(f"KV cache overflow: {t1} positions > capacity {self.k.size(3)}")
        self.k[layer, :, :, t0:t1] = k
        self.v[layer, :, :, t0:t1] = v
        return self.k[layer, :, :, :t1].to(k.dtype), self.v[layer, :, :, :t1].to(v.dtype)

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep rows `index` of the batch, in that order (repeats copy a row: one prefill, many samples)."""
        self.k, self.v = self.k[:, index], self.v[:, index]


@dataclass
class Prefix:
    """Prompts run once for all the rows that continue them: DPO's chosen and rejected replies share their
    prompt, RL's G answers their question. `model(x, select=m, prefix=p)` runs the prefix rows first, keeps
    each layer's keys/values (with their autograd history), and lets row r of x attend to those of prefix
    row owner[r] as if that prompt stood before it: the same logits as the concatenated rows (to fp32
    rounding), for a fraction of the tokens — prompts are ~77% of a tiny-recipe DPO batch's real tokens and
    ~65% of an RL batch's, and every one of them was computed once per reply.

    idx (P, W) holds the prompts, padded anywhere: key_mask (P, W) marks the real tokens (1), and their
    positions count only those. owner (R,) is the prefix row each row of x continues; x's rows are
    right-padded and start at their prompt's next position. select (P, W), optional, marks prefix positions
    whose logits are returned too, after x's: RL's anchor conversations ride as prefix rows none continues.
    """
    idx: torch.Tensor
    key_mask: torch.Tensor
    owner: torch.Tensor
    select: torch.Tensor | None = None

    def with_rows(self, idx: torch.Tensor, key_mask: torch.Tensor, select: torch.Tensor, pad_id: int
                  ) -> "Prefix":
        """This prefix and more rows that no row of x continues, read only through `select`: the same
        forward then carries whole sequences (RL's anchor conversations) beside the shared prompts."""
        W = max(self.idx.size(1), idx.size(1))

        def cat(a: torch.Tensor, b: torch.Tensor, fill) -> torch.Tensor:
            return torch.cat([F.pad(t, (0, W - t.size(1)), value=fill) for t in (a, b)])

        old = self.select if self.select is not None else torch.zeros_like(self.key_mask, dtype=torch.bool)
        return Prefix(cat(self.idx, idx, pad_id), cat(self.key_mask, key_mask, 0), self.owner,
                      cat(old, select, False))


class _PrefixKV:
    """KVCache's interface over a Prefix: the prefix pass stores each layer's keys/values; the continuation
    pass reads its prompt's through `owner`, an index, so the gradients of every continuation add up in the
    prompt they share."""

    def __init__(self, owner: torch.Tensor):
        self.owner, self.kv = owner, {}

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer not in self.kv:
            self.kv[layer] = (k, v)
            return k, v
        pk, pv = self.kv[layer]
        return torch.cat([pk[self.owner], k], 2), torch.cat([pv[self.owner], v], 2)


class RMSNorm(nn.Module):
    """x / rms(x) x weight, computed in fp32 (as Llama's and Qwen3's, which the export must reproduce)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.size(-1),), self.weight.float(), self.eps).to(x.dtype)


def make_norm(cfg: GPTConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


def rope_tables(cfg: GPTConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (block_size, head_size) of the rotary angles, the halves repeated (HF's rotate_half
    layout, so exported weights need no permutation)."""
    hd = cfg.n_embd // cfg.n_head
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd)
    angles = torch.outer(torch.arange(cfg.block_size, device=device, dtype=torch.float32), inv)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) rotated by the angles of its positions (cos, sin: (B, 1, T, D))."""
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.n_embd // cfg.n_head, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.n_embd // cfg.n_head, cfg.norm_eps)

    def forward(self, x, layer: int, cache: KVCache | None, mask: torch.Tensor | None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if hasattr(self, "q_norm"):  # per head, before the rotation (Qwen3's order)
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        drop = self.dropout if self.training else 0.0
        if mask is None:  # plain causal attention: lets SDPA pick the flash kernel
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.kind, h = cfg.mlp, cfg.hidden_mlp
        # SwiGLU's gate and up projections are one matrix (gate rows first): one matmul, one LoRA target
        self.c_fc = nn.Linear(cfg.n_embd, 2 * h if cfg.mlp == "swiglu" else h, bias=cfg.bias)
        self.c_proj = nn.Linear(h, cfg.n_embd, bias=cfg.bias)

    def forward(self, x):
        x = self.c_fc(x)
        if self.kind == "swiglu":
            gate, up = x.chunk(2, dim=-1)
            return self.c_proj(F.silu(gate) * up)
        if self.kind == "relu2":
            return self.c_proj(F.relu(x).square())
        return self.c_proj(F.gelu(x, approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg, cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg, cfg.n_embd)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, layer, cache, mask, rope=None):
        x = x + self.drop(self.attn(self.ln_1(x), layer, cache, mask, rope))
        return x + self.drop(self.mlp(self.ln_2(x)))


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of h @ W[:V]ᵀ (soft-capped if `cap`) against `targets` (-100: ignored), over chunks
    of `chunk` rows, each chunk's gradient computed in the forward pass: the (N, V) logits and their fp32
    softmax never exist whole (16K x 50K positions x vocabulary: 3.3 GB in fp32 and about a tenth of a
    gpt2-124m step spent on them). The same numbers as the one-piece loss, summed in another order."""

    @staticmethod
    def forward(ctx, h, weight, targets, vocab: int, chunk: int, cap: float):
        w = weight[:vocab]
        keep = targets != -100
        count = keep.sum().clamp(min=1)
        total = torch.zeros((), device=h.device, dtype=torch.float32)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros_like(weight)
        for s in range(0, h.size(0), chunk):
            hc, tc, kc = h[s:s + chunk], targets[s:s + chunk].clamp(min=0), keep[s:s + chunk]
            z = (hc @ w.t()).float()
            t = torch.tanh(z / cap) if cap else None
            logits = cap * t if cap else z
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, tc[:, None])[:, 0]) * kc).sum()
            g = torch.exp(logits - lse[:, None])  # softmax − one-hot: d(sum of the chunk's losses)/d logits
            g.scatter_add_(1, tc[:, None], -torch.ones_like(g[:, :1]))
            g *= kc[:, None]
            if cap:
                g *= 1 - t * t
            g = g.to(hc.dtype)
            grad_h[s:s + chunk] = g @ w
            grad_w[:vocab] += g.t() @ hc
        ctx.save_for_backward(grad_h, grad_w, count)
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_out / count
        return grad_h * scale.to(grad_h.dtype), grad_w * scale.to(grad_w.dtype), None, None, None, None


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        cfg.check()
        self.config = cfg
        modules = dict(wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd))
        if cfg.position == "learned":
            modules["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.transformer = nn.ModuleDict(dict(
            **modules,
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=make_norm(cfg, cfg.n_embd),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # weight tying, as GPT-2
        if cfg.position == "rope":  # not saved: a function of the config
            cos, sin = rope_tables(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/sqrt(2·n_layer)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Unique parameters (the tied head counted once; padded rows included, they are computed)."""
        return sum(p.numel() for p in self.parameters())

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None, positions: torch.Tensor | None = None,
               key_mask: torch.Tensor | None = None, segments: torch.Tensor | None = None) -> torch.Tensor:
        """Final-LayerNorm hidden states (B, T, C).

        `positions` (B, T) overrides 0..T-1 (left-padded batches); `key_mask` (B, T_keys) marks real tokens;
        `segments` (B, T) numbers the sequences packed in a row (data.chat.collate_packed): a token attends
        only to earlier tokens of its own.
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds block_size {self.config.block_size}")
        if positions is None:
            positions = torch.arange(past, past + T, device=idx.device).unsqueeze(0)
        mask = self._attn_mask(T, past, key_mask, idx.device)
        if segments is not None:
            if past or key_mask is not None:
                raise ValueError("packed segments take no cache and no key_mask")
            same = segments[:, None, :, None] == segments[:, None, None, :]
            mask = same & torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
        h = self._blocks(idx, positions, mask, cache)
        if cache is not None:
            cache.length += T
        return h

    def _blocks(self, idx, positions, mask, cache) -> torch.Tensor:
        x, rope = self.transformer.wte(idx), None
        if self.config.position == "learned":
            x = x + self.transformer.wpe(positions)
        else:
            positions = positions.expand(idx.size(0), -1)
            rope = (self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1))
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, i, cache, mask, rope)
        return self.transformer.ln_f(x)

    def hidden_after(self, idx: torch.Tensor, prefix: Prefix, select: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states of x's rows (R, T), each continuing its prompt, and of the prefix rows (P, W)."""
        km = prefix.key_mask
        W, (R, T) = km.size(1), idx.shape
        kv = _PrefixKV(prefix.owner)
        hp = self._blocks(prefix.idx, (km.cumsum(-1) - 1).clamp(min=0), self._attn_mask(W, 0, km, idx.device),
                          kv)
        # each row starts at its prompt's real length; a short row's trailing pads may run past the context
        # (rows are as wide as the longest), and only they: the positions read must fit
        positions = km.sum(-1)[prefix.owner][:, None] + torch.arange(T, device=idx.device)
        if select.any() and int(positions[select].max()) >= self.config.block_size:
            raise ValueError(f"sequence of {int(positions[select].max()) + 1} tokens exceeds block_size "
                             f"{self.config.block_size}")
        positions = positions.clamp(max=self.config.block_size - 1)
        # keys: the prompt's W columns (its pads masked), then the row's own T, causal (query t sits at W + t)
        key_mask = torch.cat([km[prefix.owner], km.new_ones(R, T)], 1)
        h = self._blocks(idx, positions, self._attn_mask(T, W, key_mask, idx.device), kv)
        return h, hp

    @staticmethod
    def _attn_mask(T: int, past: int, key_mask: torch.Tensor | None, device) -> torch.Tensor | None:
        """Boolean (B|1, 1, T, past+T) mask, or None when plain causal attention suffices."""
        if key_mask is None and past == 0:
            return None
        q_pos = torch.arange(past, past + T, device=device)
        k_pos = torch.arange(past + T, device=device)
        allowed = (k_pos[None, :] <= q_pos[:, None])[None, None]
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, None, : past + T].bool()
            # a padding query that sees no key would make SDPA return NaN; let it see itself
            allowed = allowed | (k_pos[None, :] == q_pos[:, None])[None, None]
        return allowed

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """LM head on hidden states, cut to the real vocabulary (a view: the padded rows are never seen)."""
        logits = self.lm_head(h)[..., : self.config.vocab_size]
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                select: torch.Tensor | None = None, prefix: Prefix | None = None, ce_chunk: int = 0, **kw):
        """Logits (B, T, V); with `targets`, also the mean cross-entropy (targets == -100 ignored).

        `ce_chunk` > 0 (pre-training, with gradients): the loss over chunks of that many positions, each
        chunk's gradient computed at once (ChunkedLinearCrossEntropy), and no logits returned (None).

        `select` (B, T) bool keeps only those positions' logits, (N, V), and targets: a stage whose loss
        reads only the answer tokens (SFT, DPO, RL) then skips the LM head and the softmax on the prompt,
        about half of the positions. (A boolean index is a host sync on a GPU, so pre-training, where every
        position has a target, never passes one.) With a `prefix` (Prefix: the rows continue shared
        prompts) `select` is required and the prefix's selected positions follow x's."""
        if prefix is not None:
            if select is None or targets is not None:
                raise ValueError("a prefix forward takes `select` and no targets")
            h, hp = self.hidden_after(idx, prefix, select)
            h = h[select] if prefix.select is None else torch.cat([h[select], hp[prefix.select]])
            return self.logits(h), None
        h = self.hidden(idx, **kw)
        if ce_chunk and targets is not None and select is None and torch.is_grad_enabled():
            loss = ChunkedLinearCrossEntropy.apply(h.reshape(-1, h.size(-1)), self.lm_head.weight,
                                                   targets.reshape(-1), self.config.vocab_size, ce_chunk,
                                                   self.config.logit_softcap)
            return None, loss
        if select is not None:
            h = h[select]
            targets = targets[select] if targets is not None else None
        logits = self.logits(h)
        if targets is None:
            return logits, None
        # softmax over the real vocabulary only, as llm.c does; the float copy is made once, after the cut
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-100)
        return logits, loss


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token (B, 1) from last-position logits (B, V); temperature 0 means greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    # Inverse-CDF sampling: one uniform per row, found in the cumulative distribution. It draws from
    # exactly the softmax's distribution, and on CPU it is ~7x faster than torch.multinomial (0.19 ms vs
    # 1.3 ms for 64 rows of 768 tokens; multinomial was a fifth of the RL stage's sampling). The sums are
    # float64 so the last bins are not lost to rounding; a token of probability 0 (top-k/top-p, or an
    # underflow) has an empty bin and can never be drawn — `right=True` skips it, and the clamp keeps a
    # uniform that rounds up to the total inside the last token that has probability.
    probs = logits.softmax(-1).double()
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.size(0), 1, generator=generator, device=probs.device, dtype=torch.float64)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    last = probs.size(-1) - 1 - (probs.flip(-1) > 0).int().argmax(-1, keepdim=True)
    return torch.minimum(idx, last)


# ---- Hugging Face GPT2LMHeadModel conversion (its Conv1D stores weights as (in, out)) ----
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Hugging Face's layout and the real vocabulary: the padded embedding rows are dropped."""
    sd, V = {}, model.config.vocab_size
    for k, v in model.state_dict().items():
        if k in _VOCAB_ROWS:
            v = v[:V]
        sd[k] = v.t().contiguous() if k.endswith(_CONV1D) else v.clone()
    return sd


_VOCAB_ROWS = ("transformer.wte.weight", "lm_head.weight")


def pad_vocab_rows(sd: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Embedding / head tensors stored with vocab_size rows (the HF layout, older checkpoints) → padded rows
    (zeros: the padded rows are never used)."""
    out = dict(sd)
    for k in _VOCAB_ROWS:
        v = sd.get(k)
        if v is not None and v.dim() == 2 and v.size(0) == cfg.vocab_size < cfg.padded_vocab_size:
            out[k] = torch.cat([v, v.new_zeros(cfg.padded_vocab_size - cfg.vocab_size, v.size(1))])
    return out


def from_hf_state_dict(sd: dict[str, torch.Tensor], cfg: GPTConfig) -> GPT:
    model = GPT(cfg)
    ours, sd = model.state_dict(), pad_vocab_rows(sd, cfg)
    for k in ours:
        if k not in sd:
            raise KeyError(f"Hugging Face state dict lacks {k!r}")
        v = sd[k].t() if k.endswith(_CONV1D) else sd[k]
        if v.shape != ours[k].shape:
            raise ValueError(f"{k}: shape {tuple(v.shape)} does not match ours {tuple(ours[k].shape)}")
        ours[k].copy_(v)
    return model


def hf_config(cfg: GPTConfig) -> dict:
    """Keyword arguments for `transformers.GPT2Config` matching `cfg`."""
    # n_ctx: GPT-2's own name for the context, which llama.cpp's converter reads (transformers ignores it)
    return dict(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_ctx=cfg.block_size,
                n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head, activation_function="gelu_new",
                resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                tie_word_embeddings=True, bos_token_id=50256 if cfg.vocab_size > 50256 else None,
                eos_token_id=50256 if cfg.vocab_size > 50256 else None)


# ---- Llama / Qwen3 conversion: the modern switches that a stock architecture expresses exactly ----
def stock_architecture(cfg: GPTConfig) -> str:
    """The transformers architecture that computes exactly what `cfg` does, or a ValueError naming the
    switch none has."""
    if cfg.classic:
        return "GPT2LMHeadModel"
    modern = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, logit_softcap=0.0)
    off = [f"{k}: {getattr(cfg, k)!r}" for k, v in modern.items() if getattr(cfg, k) != v]
    if off:
        raise ValueError(f"no stock transformers architecture has this model's {', '.join(off)}: GPT-2 "
                         "(the defaults) and Llama/Qwen3 (position rope, norm rmsnorm, mlp swiglu, bias "
                         "false, no soft-cap; qk_norm picks Qwen3) export")
    return "Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM"


def llama_config(cfg: GPTConfig) -> dict:
    """Keyword arguments for `transformers.LlamaConfig` / `Qwen3Config` matching `cfg`."""
    return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.hidden_mlp,
                num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
                head_dim=cfg.n_embd // cfg.n_head, max_position_embeddings=cfg.block_size,
                rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, hidden_act="silu",
                attention_bias=False, mlp_bias=False, tie_word_embeddings=cfg.tie_embeddings)


def to_llama_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Llama's (and Qwen3's) parameter names; our fused q|k|v and gate|up matrices split in their order."""
    cfg, V, C, H = model.config, model.config.vocab_size, model.config.n_embd, model.config.hidden_mlp
    sd = model.state_dict()
    out = {"model.embed_tokens.weight": sd["transformer.wte.weight"][:V],
           "model.norm.weight": sd["transformer.ln_f.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"][:V]
    for i in range(cfg.n_layer):
        ours, hf = f"transformer.h.{i}.", f"model.layers.{i}."
        q, k, v = sd[ours + "attn.c_attn.weight"].split(C)
        gate, up = sd[ours + "mlp.c_fc.weight"].split(H)
        out.update({hf + "input_layernorm.weight": sd[ours + "ln_1.weight"],
                    hf + "post_attention_layernorm.weight": sd[ours + "ln_2.weight"],
                    hf + "self_attn.q_proj.weight": q, hf + "self_attn.k_proj.weight": k,
                    hf + "self_attn.v_proj.weight": v,
                    hf + "self_attn.o_proj.weight": sd[ours + "attn.c_proj.weight"],
                    hf + "mlp.gate_proj.weight": gate, hf + "mlp.up_proj.weight": up,
                    hf + "mlp.down_proj.weight": sd[ours + "mlp.c_proj.weight"]})
        if cfg.qk_norm:
            out[hf + "self_attn.q_norm.weight"] = sd[ours + "attn.q_norm.weight"]
            out[hf + "self_attn.k_norm.weight"] = sd[ours + "attn.k_norm.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}
