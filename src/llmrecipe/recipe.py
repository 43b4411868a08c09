"""`llmrecipe run`: the stage chain with skip/resume, and a report at the end.

Each stage writes its folder under the run and a `done.json` holding a hash of its resolved config and
inputs. A rerun skips stages whose hash matches, resumes an interrupted one from its last checkpoint, and
reruns a stage (and everything after it) whose config changed.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import latest_checkpoint, load_model
from .config import apply_overrides, load_preset, to_dict
from .data.prepare import PrepareConfig, prepare
from .data.world import write_pretrain_corpus
from .files import atomic_write_json, atomic_write_text
from .train.pretrain import pretrain_config, run_pretrain


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _stage(name: str, folder: Path, key: dict, work: Callable[[bool], dict], timings: dict) -> dict:
    """Run `work(resume)` unless `folder/done.json` matches `key`; returns the stage's summary."""
    marker, digest = folder / "done.json", _hash(key)
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done["hash"] == digest:
            print(f"[{name}] up to date, skipped")
            timings[name] = done["seconds"]
            return done["summary"]
        print(f"[{name}] config changed: rerunning")
        shutil.rmtree(folder)
    resume = latest_checkpoint(folder) is not None
    print(f"[{name}] " + ("resuming" if resume else "running"))
    t0 = time.time()
    summary = work(resume)
    timings[name] = round(time.time() - t0, 1)
    atomic_write_json(marker, {"hash": digest, "seconds": timings[name], "summary": summary})
    return summary


def run(preset: str, out: str | Path, overrides: dict[str, str] | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    p = load_preset(preset)
    timings: dict[str, float] = {}
    world = p.get("world")
    if world:
        corpus = out / "world" / "pretrain.jsonl"
        _stage("world", out / "world", world, lambda _: {"file": str(write_pretrain_corpus(
            corpus, world["pretrain_docs"], world["seed"]))}, timings)
        source: str | list[str] = str(corpus)
    else:
        source = p["prepare"]["source"]
    prep = PrepareConfig(**{**p.get("prepare", {}), "source": source, "out": str(out / "data")})
    data = _stage("data", out / "data", to_dict(prep) | {"after": _hash(world)},
                  lambda _: prepare(prep), timings)
    cfg = apply_overrides(pretrain_config(preset), overrides or {})
    cfg.data = str(out / "data")
    base = _stage("pretrain", out / "base", to_dict(cfg) | {"after": _hash(data)},
                  lambda resume: run_pretrain(cfg, out / "base", resume=resume), timings)
    sample = _sample(out / "base", "One day")
    results = {"preset": preset, "timings_s": timings, "data": data, "pretrain": base, "sample": sample}
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "report.md", _report(results))
    print(f"report: {out / 'report.md'}")
    return results


def _sample(model_dir: Path, prompt: str) -> str:
    model, tok = load_model(model_dir)
    model.eval()
    g = torch.Generator().manual_seed(0)
    ids = tok.encode(prompt)
    out = model.generate(torch.tensor([ids]), 60, temperature=0.8, top_k=50, stop_ids={tok.eot_id}, generator=g)
    return prompt + tok.decode(t for t in out[0].tolist()[len(ids):] if t != tok.eot_id)


def _report(r: dict) -> str:
    pt = r["pretrain"]
    rows = "\n".join(f"| {k} | {v:.1f} |" for k, v in r["timings_s"].items())
    return f"""# llmrecipe run — preset `{r['preset']}`

## Stages
| stage | seconds |
|---|---:|
{rows}

## Data
{r['data']['documents']:,} documents → {r['data']['train_tokens']:,} training and {r['data']['val_tokens']:,} validation
tokens (tokenizer `{r['data']['tokenizer']}`, vocabulary {r['data']['vocab_size']:,}).

## Pre-training
final step {pt.get('step')}: train loss {pt.get('loss')}, validation loss {pt.get('val_loss', float('nan')):.4f}
(perplexity {pt.get('val_ppl', float('nan')):.2f}), {pt.get('tokens_per_sec')} tokens/s.

Sample (temperature 0.8, top-k 50):

> {r['sample'].replace(chr(10), ' ')}
"""
