"""Pre-training throughput at 1 and 2 processes (torchrun, DDP) on the tiny config, same global batch.

    python bench/bench_distributed.py [--nprocs 1,2] [--steps 30]

Generates the tiny world corpus in a temp folder, then runs `torchrun -m llmrecipe pretrain` per process
count and reads tokens/s (global) from metrics.jsonl, averaged after the first logged window.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from llmrecipe.data.prepare import PrepareConfig, prepare
from llmrecipe.world.corpus import write_pretrain_corpus


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nprocs", default="1,2")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--parallel", default="ddp")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    corpus = write_pretrain_corpus(tmp / "world.jsonl", 3000)
    prepare(PrepareConfig(source=str(corpus), out=str(tmp / "data"), tokenizer="bpe", bpe_vocab_size=2048,
                          workers=1))
    print("| processes | threads each | global batch (seqs x T) | tokens/s | vs 1 process |\n"
          "|---:|---:|---:|---:|---:|")
    base = None
    for n in map(int, a.nprocs.split(",")):
        threads = max(1, (os.cpu_count() or 2) // n)
        out = tmp / f"run{n}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
               "-m", "llmrecipe", "pretrain", "--preset", "tiny", "--data", str(tmp / "data"),
               "--out", str(out), "--set", f"max_steps={a.steps}", "grad_accum=2", "batch_size=8",
               "log_interval=5", "eval_interval=0",
               f"save_interval={a.steps * 10}", f"parallel={a.parallel}"]
        subprocess.run(cmd, check=True, capture_output=True,
                       env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][1:]
        tps = sum(r["tokens_per_sec"] for r in recs) / len(recs)
        base = base or tps
        print(f"| {n} | {threads} | 16 x 256 | {tps:,.0f} | {tps / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
