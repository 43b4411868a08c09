"""The small inference engine shared by evaluation, chat and serving: batched log-likelihood scoring and
batched generation with the KV cache.

Scoring right-pads (causal attention never lets a real token see a later pad). Generation left-pads
so every row's next token sits in the last column; a key mask hides the pads and positions restart at 0
for each row, so a prompt's output is the same alone or in a batch of unequal lengths.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Iterator

import torch

from .model import GPT, KVCache, sample
from .runtime import Runtime
from .tokenizer import Tokenizer


def default_new_tokens(block: int) -> int:
    """Interactive commands' default budget: a quarter of the context (64 tokens on the tiny model's 256,
    256 on GPT-2's 1,024), so a question and its history keep the rest."""
    return max(16, block // 4)


def fit_new_tokens(prompt_len: int, requested: int, block: int) -> tuple[int, str | None]:
    """Interactive use's one rule (chat, generate, serve): a prompt that fits is kept whole and the budget of
    new tokens is cut to the room left, with a note; the engine's own rule (room for the budget first, the
    prompt cut from the left, as lm-evaluation-harness does) is for evaluation only."""
    room = block - prompt_len
    if room < 1:
        raise ValueError(f"the prompt is {prompt_len:,} tokens and this model's context is {block:,}: "
                         "shorten it")
    if requested <= room:
        return requested, None
    return room, (f"note: {requested} new tokens cut to {room}: the prompt takes {prompt_len:,} of the "
                  f"{block:,}-token context")


@dataclass
class Scored:
    logprob: float  # Σ log p(continuation | context)
    greedy: bool  # every continuation token was the argmax
    n_tokens: int


class Engine:
    def __init__(self, model: GPT, tokenizer: Tokenizer, rt: Runtime, batch_size: int = 16):
        self.model, self.tok, self.rt, self.batch_size = model.eval().to(rt.device), tokenizer, rt, batch_size
        self.block = model.config.block_size

    # ---- scoring ----
    @torch.no_grad()
    def score(self, requests: list[tuple[list[int], list[int]]]) -> list[Scored]:
        """Log-likelihood of each continuation after its context; contexts too long are cut from the left."""
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]) - len(requests[i][1]))
        out: list[Scored | None] = [None] * len(requests)
        for b in range(0, len(order), self.batch_size):
            idx = order[b: b + self.batch_size]
            seqs, spans = [], []
            for i in idx:
                ctx, cont = requests[i]
                if not cont:
                    raise ValueError("score: empty continuation")
                full = (ctx + cont)[-(self.block + 1):]
                seqs.append(full)
                spans.append(len(cont))
            T = max(len(s) for s in seqs) - 1
            x = torch.zeros(len(seqs), T, dtype=torch.long)
            for r, s in enumerate(seqs):
                x[r, : len(s) - 1] = torch.tensor(s[:-1])
            with self.rt.autocast():
                logits = self.model(x.to(self.rt.device))[0].float()
            logp = torch.log_softmax(logits, -1)
            for r, (s, n) in enumerate(zip(seqs, spans)):
                pos = torch.arange(len(s) - 1 - n, len(s) - 1)
                target = torch.tensor(s[-n:], device=logp.device)
                lp = logp[r, pos].gather(-1, target[:, None]).squeeze(-1)
                greedy = bool((logp[r, pos].argmax(-1) == target).all())
                out[idx[r]] = Scored(lp.sum().item(), greedy, n)
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def next_token_logprobs(self, contexts: list[list[int]], candidates: list[int]) -> torch.Tensor:
        """(N, len(candidates)) log-probs of single candidate tokens after each context: one forward each."""
        rows = []
        for b in range(0, len(contexts), self.batch_size):
            chunk = [c[-self.block:] for c in contexts[b: b + self.batch_size]]
            T = max(len(c) for c in chunk)
            x = torch.zeros(len(chunk), T, dtype=torch.long)
            for r, c in enumerate(chunk):
                x[r, : len(c)] = torch.tensor(c)
            last = torch.tensor([len(c) - 1 for c in chunk])
            with self.rt.autocast():
                h = self.model.hidden(x.to(self.rt.device))
                logits = self.model.logits(h[torch.arange(len(chunk)), last.to(h.device)]).float()
            rows.append(torch.log_softmax(logits, -1)[:, candidates].cpu())
        return torch.cat(rows)

    # ---- generation ----
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, stop: list[str] | None = None,
                 seed: int | None = None) -> list[list[int]]:
        """New tokens for each prompt (EOT and any stop string end a row; the stop itself is not returned)."""
        out: list[list[int] | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        g = torch.Generator(device=self.rt.device)
        g.manual_seed(seed if seed is not None else 0)
        for b in range(0, len(order), self.batch_size):
            idx = order[b: b + self.batch_size]
            results = self._generate_batch([prompts[i] for i in idx], max_new_tokens, temperature, top_k,
                                           top_p, stop or [], g)
            for i, r in zip(idx, results):
                out[i] = r
        return out  # type: ignore[return-value]

    def _generate_batch(self, prompts, max_new, temperature, top_k, top_p, stop, g) -> list[list[int]]:
        new: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        steps = self._steps(prompts, max_new, temperature, top_k, top_p, g)
        for nxt in steps:
            for r, tok in enumerate(nxt):
                if not done[r]:
                    done[r] = self._append(new[r], tok, stop)
            if all(done):
                steps.close()
        return new

    def _steps(self, prompts, max_new, temperature, top_k, top_p, g) -> Iterator[list[int]]:
        """Yield each step's next token for every row (left-padded batch, KV cache)."""
        dev = self.rt.device
        budget = max(1, min(max_new, self.block - 1))
        prompts = [p[-(self.block - budget):] or [self.tok.eot_id] for p in prompts]
        P = max(len(p) for p in prompts)
        max_new = min(max_new, self.block - P)
        # Rows that share a prompt (RL's G answers to a question, a request's n choices) are prefilled once
        # and their cache copied: the prompt's forward is the largest of a generation (RL: 64 rows of ~46
        # tokens, then ~25 steps of one token)
        first: dict[tuple[int, ...], int] = {}
        row = torch.tensor([first.setdefault(tuple(p), len(first)) for p in prompts], device=dev)
        unique = list(first)
        U = len(unique)
        x = torch.zeros(U, P, dtype=torch.long)
        key_mask = torch.zeros(U, P + max_new, dtype=torch.long)
        for r, p in enumerate(unique):
            x[r, P - len(p):] = torch.tensor(p)
            key_mask[r, P - len(p):] = 1
        key_mask[:, P:] = 1
        x, key_mask = x.to(dev), key_mask.to(dev)
        positions = (key_mask[:, :P].cumsum(-1) - 1).clamp(min=0)
        cache = KVCache(self.model.config, U, P + max_new, dev, self.model.transformer.wte.weight.dtype)
        with torch.no_grad(), self.rt.autocast():
            h = self.model.hidden(x, cache=cache, positions=positions, key_mask=key_mask)
            logits = self.model.logits(h[:, -1]).float()
            if U < len(prompts):
                cache.select_rows(row)
                key_mask, positions, logits = key_mask[row], positions[row], logits[row]
            for t in range(max_new):
                nxt = sample(logits, temperature, top_k, top_p, g)
                yield nxt.view(-1).tolist()
                if t == max_new - 1:
                    break
                pos = positions[:, -1:] + 1 + t
                h = self.model.hidden(nxt, cache=cache, positions=pos, key_mask=key_mask)
                logits = self.model.logits(h[:, -1]).float()

    def stream(self, prompt: list[int], max_new_tokens: int, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, stop: list[str] | None = None,
               seed: int | None = None) -> Generator[str, None, str]:
        """Text pieces of one prompt's continuation as they are generated (stop strings never leak out);
        returns "stop" (EOT or a stop string) or "length" (the token budget ran out)."""
        g = torch.Generator(device=self.rt.device)
        g.manual_seed(seed if seed is not None else 0)
        stop = stop or []
        hold = max((len(s) for s in stop), default=1) - 1
        tokens: list[int] = []
        self.streamed = tokens  # the tokens so far (a server's usage count reads it)
        sent = 0
        finish = "length"  # the generator's return value: OpenAI's finish_reason
        for (tok,) in self._steps([prompt], max_new_tokens, temperature, top_k, top_p, g):
            if tok == self.tok.eot_id:
                finish = "stop"
                break
            tokens.append(tok)
            text = self.tok.decode(tokens)
            cut = min((text.find(s) for s in stop if s in text), default=-1)
            if cut >= 0:
                yield text[sent:cut]
                return "stop"
            safe = len(text) - hold
            if safe > sent and not text.endswith("\ufffd"):
                yield text[sent:safe]
                sent = safe
        text = self.tok.decode(tokens)
        if len(text) > sent:
            yield text[sent:]
        return finish

    def _append(self, row: list[int], token: int, stop: list[str]) -> bool:
        """Add a token to a row; True when the row is finished (EOT or a stop string, which is cut off)."""
        if token == self.tok.eot_id:
            return True
        row.append(token)
        if stop:
            text = self.tok.decode(row[-32:])
            for s in stop:
                if s in text:
                    full = self.tok.decode(row)
                    cut = self.tok.encode(full[: full.index(s)])
                    row[:] = cut
                    return True
        return False
