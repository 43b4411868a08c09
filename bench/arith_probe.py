"""How much arithmetic a chat model of the tiny world holds: the headroom RL's GSM8K-analog gain comes from.

    python bench/arith_probe.py runs/demo/sft runs/demo/dpo OTHER/dpo

Nearly every failure on the world's word problems, before and after RL, is a wrong sum (names and numbers are
copied right in 98% or more of them; BENCHMARKS.md, session 18), and RL can only sharpen sums the model
already gives some probability. So, for every fact the world's word problems ask (a + b and a - b, in the
world's own wording, drawn with `world.instructions`), this asks the model the question in the GSM8K
analog's shape and teacher-forces its worked solution up to "a + b =": the probability it puts on the right
result, whether that result is its greedy choice, and the share of facts it gives more than even odds. Prints
one Markdown row per model. A few seconds a model; screens pre-training variants for RL without a whole run.
"""
from __future__ import annotations

import argparse
import math
import random

from llmrecipe.chat import encode_chat
from llmrecipe.checkpoint import load_model
from llmrecipe.world.cast import characters
from llmrecipe.world.instructions import word_problem
from llmrecipe.engine import Engine
from llmrecipe.runtime import setup


def facts(seed: int = 0) -> list[tuple[str, str, str]]:
    """(question, solution up to and including '=', ' result.') once per distinct (a, op, b) the world asks,
    in its own wording; drawn until no new fact appears in 2,000 draws."""
    rng, cast, found, dry = random.Random(seed), characters(seed), {}, 0
    while dry < 2000:
        q, sol, _ = word_problem(rng, rng.choice(cast))
        head, tail = sol.rsplit(" = ", 1)  # "… 10 + 3", "13. The answer is 13."
        key = head.rsplit(". ", 1)[1]  # "10 + 3"
        if key in found:
            dry += 1
            continue
        found[key], dry = (q, head + " =", " " + tail.split(" ", 1)[0]), 0
    return [found[k] for k in sorted(found)]


def probe(model_dir: str, items: list[tuple[str, str, str]]) -> tuple[float, float, float]:
    """(mean P(right result), greedy accuracy, share of facts with P > 0.5) of a model (or adapter) folder."""
    model, tok = load_model(model_dir, merge_adapters=True)
    eng = Engine(model, tok, setup("cpu"), batch_size=64)
    requests = []
    for q, upto, result in items:
        # the GSM8K analog's user turn (world.instructions.problem_turn), then the worked answer so far
        ctx = encode_chat([{"role": "user", "content": f"Q: {q}\nA:"}], tok, add_generation_prompt=True).ids
        requests.append((ctx + tok.encode(upto), tok.encode(result)))
    scored = eng.score(requests)
    p = [math.exp(s.logprob) for s in scored]
    return sum(p) / len(p), sum(s.greedy for s in scored) / len(p), sum(x > 0.5 for x in p) / len(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="chat model or adapter folders (sft, dpo, rl of a tiny run)")
    ap.add_argument("--seed", type=int, default=0, help="draws the facts' wording (the facts are the same)")
    args = ap.parse_args()
    items = facts(args.seed)
    print(f"{len(items)} facts\n\n| model | mean P(right result) | greedy right | facts with P > 0.5 |\n"
          "|---|---:|---:|---:|")
    for m in args.models:
        mean_p, greedy, sure = probe(m, items)
        print(f"| {m} | {mean_p:.3f} | {greedy:.3f} | {sure:.3f} |")


if __name__ == "__main__":
    main()
