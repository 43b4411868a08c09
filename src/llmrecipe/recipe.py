"""`llmrecipe run`: the whole chain — data → pre-train → SFT → DPO → evaluate → report — in one command.

Each stage writes its folder under the run and a `done.json` holding a hash of its resolved config and of
the stage before it. A rerun skips stages whose hash matches, resumes an interrupted one from its last
checkpoint (evaluation from its per-item records), and reruns a stage whose config changed, and so every
stage after it.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .checkpoint import has_checkpoints
from .config import apply_overrides, build, load_preset, to_dict, validate
from .data.prepare import PrepareConfig, prepare
from .data.sources import is_local, resolve_files
from .eval import make_suites
from .eval.harness import comparisons, evaluate, load_eval_model, write_table
from .files import atomic_write_json, folder_lock, read_json
from .report import environment, write_report
from .train import stage_config
from .train.dpo import run_dpo
from .train.onpolicy import OnPolicyConfig, onpolicy_pairs
from .train.pretrain import run_pretrain
from .train.rl import run_rl
from .train.sft import run_sft
from .world.corpus import MAX_ARITHMETIC_PERCENT, write_pretrain_corpus
from .world.datasets import write_chat_data, write_eval_sets, write_rl_problems

STAGES = ("pretrain", "sft", "onpolicy", "dpo", "rl")
# `run --data-dir D` for the hub presets: where each stage finds its data set's parquet files under D
# (eval suites read D/eval/<suite>/ in the layout the suites document).
DATA_DIR_LAYOUT = {"pretrain": "pretrain/*.parquet", "sft": "sft/*.parquet",
                   "dpo": "preference/ultrafeedback/*train*.parquet"}


@dataclass
class EvalConfig:
    # comma-separated: mmlu_pro, gsm8k, ifeval, mt_bench, mmlu_pro_category; all = first four
    suites: str = "all"
    limit: int | None = None  # items per suite (stratified for MMLU-Pro)
    max_new_tokens: int | None = None  # None: each suite's own default
    scoring: str | None = None  # MMLU-Pro: "letter" (the benchmark's way) or "text" (rank the option texts)
    shots: int | None = None  # few-shot exemplars for MMLU-Pro and GSM8K (None: 5 and 8, as the benchmarks)
    # prompts per forward. 16 bounds a 124M model's scoring logits (16 x 1,024 x 50,304 floats, 3.3 GB);
    # a tiny model's decoding is per-step overhead, so larger batches are nearly free per prompt
    batch_size: int = 16
    data_dir: str | None = None  # the suites' files in the hub's layout (`eval.data_dir=`); None: preset's


# Settings that change how a stage is watched, not what it computes: outside the stage's hash, so adding
# `--log tensorboard` to a finished run redoes nothing.
NOT_RESULTS = {"log"}


def _key(obj, root: Path):
    """A stage's settings as they enter its hash: without the run folder's path (`--out runs/x` then
    `--out $PWD/runs/x`: one run), the preset's name (a label: the resolved values are what the stage
    computes from) and the logging options."""
    if isinstance(obj, dict):
        return {k: _key(v, root) for k, v in obj.items() if k != "preset" and k not in NOT_RESULTS}
    if isinstance(obj, list):
        return [_key(v, root) for v in obj]
    return obj.replace(str(root), "<run>") if isinstance(obj, str) else obj


def _hash(obj, root: Path) -> str:
    text = json.dumps(_key(obj, root), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _matches(done: dict, key: dict, root: Path) -> bool:
    """Whether a done.json vouches for these settings; a run finished before the logging options left the
    hash (their `train.log` inside it) still matches when only those differ."""
    if done.get("hash") == _hash(key, root):
        return True
    if "key" in done:
        return False
    # keys added since (with the value that changes nothing) were not in the old hash
    legacy = {k: v for k, v in key.items() if k != "preset" and not (k == "overwrite" and v is False)}
    text = json.dumps(legacy, sort_keys=True, default=str).replace(str(root), "<run>")
    return any(done.get("hash") == hashlib.sha256(t.encode()).hexdigest()[:16]
               for t in (text, re.sub(r'"log": "[^"]*"', '"log": ""', text)))


def _differences(old, new, where: str = "") -> list[str]:
    """'key: old → new' for every setting that differs (nested keys dotted)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new)) if k != "after"
                for d in _differences(old.get(k), new.get(k), f"{where}{k}.")]
    return [] if old == new else [f"{where.rstrip('.')}: {old!r} → {new!r}"]


class StageChanged(ValueError):
    """A finished stage's settings differ from this run's: redoing it deletes work, so it is asked for."""


@dataclass
class _Plan:
    """Which finished stages this `run` redoes: those named by --redo, and every stage after one redone."""
    redo: set[str]
    redoing: bool = False


def _stage(name: str, folder: Path, key: dict, work: Callable[[bool], dict], timings: dict,
           resumable: bool = True, plan: _Plan | None = None) -> tuple[dict, str]:
    """Run `work(resume)` unless `folder/done.json` matches `key`; returns (summary, this stage's hash).
    A stage that cannot resume (`resumable=False`) starts from an empty folder after an interruption. A
    finished stage whose settings changed is redone only when asked (`--redo`), or after a stage that was."""
    plan = plan or _Plan(set())
    marker, digest = folder / "done.json", _hash(key, folder.parent)
    if marker.is_file():
        done = json.loads(marker.read_text())
        asked = name in plan.redo or "all" in plan.redo
        if _matches(done, key, folder.parent) and not asked and not plan.redoing:
            print(f"[{name}] up to date, skipped")
            timings[name] = done["seconds"]
            return done["summary"], digest
        print(f"[{name}] " + ("redoing (--redo)" if asked else "rerunning: a stage before it was redone"
                              if plan.redoing else "config changed: rerunning"))
        shutil.rmtree(folder)
        plan.redoing = True
    elif folder.exists() and not resumable:
        shutil.rmtree(folder)
    if not marker.is_file():
        plan.redoing = True  # every stage after one that runs now runs too
    resume = has_checkpoints(folder)  # train() then resumes from the newest one that verifies
    print(f"[{name}] " + ("resuming from its last checkpoint" if resume else "running"), flush=True)
    t0 = time.time()
    summary = work(resume)
    timings[name] = round(time.time() - t0, 1)
    atomic_write_json(marker, {"hash": digest, "key": _key(key, folder.parent), "seconds": timings[name],
                               "summary": summary})
    return summary, digest


def check_changes(specs: list[tuple[str, Path, dict]], redo: set[str]) -> None:
    """Before any stage runs: the first finished stage whose settings differ from this run's must be named
    by --redo (or follow one that is); else one line naming it and the settings that differ. Stages after
    it, or after an unfinished one, are redone as a consequence and need no flag."""
    for name, folder, key in specs:
        marker = folder / "done.json"
        if name in redo or "all" in redo or not marker.is_file():
            return  # this stage runs, and every stage after it
        done = json.loads(marker.read_text())
        if _matches(done, key, folder.parent):
            continue
        later = [n for n, _, _ in specs[specs.index((name, folder, key)) + 1:]]
        diffs = _differences(done.get("key"), _key(key, folder.parent)) if "key" in done else []
        what = "; ".join(diffs[:4]) + (f"; … {len(diffs) - 4} more" if len(diffs) > 4 else "") if diffs \
            else "its settings differ from those it ran with"
        raise StageChanged(f"[{name}] finished with other settings ({what}): pass --redo {name} to retrain "
                           f"it{' and what follows (' + ', '.join(later) + ')' if later else ''}, or "
                           "choose another --out")


def split_overrides(overrides: dict[str, str]) -> dict[str, dict[str, str]]:
    """`sft.lr=1e-3` → {"sft": {"lr": "1e-3"}}; bare keys go to pre-training; `eval.limit=20` to evaluation,
    `world.sft_conversations=1000` to the generated world."""
    out: dict[str, dict[str, str]] = {s: {} for s in (*STAGES, "eval", "world", "prepare")}
    for k, v in overrides.items():
        head, _, rest = k.partition(".")
        if head in out and rest:
            out[head][rest] = v
        else:
            out["pretrain"][k] = v
    return out


def run(preset: str, out: str | Path, overrides: dict[str, str] | None = None,
        data_dir: str | None = None, redo: set[str] | frozenset[str] = frozenset()) -> dict:
    """The whole recipe into `out`. `redo`: finished stages to do again (and so every stage after them),
    or {"all"}; a finished stage whose settings changed is otherwise an error, never silently redone."""
    out, p, ov = Path(out), load_preset(preset), split_overrides(overrides or {})
    if data_dir and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir}: no such folder")
    if data_dir and p.get("world"):
        print(f"note: --preset {preset} generates its own data; --data-dir {data_dir} is not used")
    world, (source, sft_data, dpo_data, eval_dir) = _world_config(p, ov["world"]), _inputs(p, out, data_dir)
    # every config is resolved before anything runs: a bad key fails now, not after pre-training
    prep = _apply("prepare.", PrepareConfig(**{**p.get("prepare", {}), "source": source,
                                               "out": str(out / "data")}), ov["prepare"])
    pre = _apply("", stage_config("pretrain", preset, p), ov["pretrain"])  # the preset is read once (p)
    sft, dpo = (_apply(f"{s}.", stage_config(s, preset, p), ov[s]) for s in ("sft", "dpo"))
    rl = _apply("rl.", stage_config("rl", preset, p), ov["rl"])
    op = _apply("onpolicy.", build(OnPolicyConfig, p.get("onpolicy", {})), ov["onpolicy"])
    ev = _apply("eval.", build(EvalConfig, p.get("eval", {})), ov["eval"])
    for key, stage_ov in (("out", ov["prepare"]), ("data", ov["pretrain"]), ("base", ov["sft"]),
                          ("sft", ov["dpo"]), ("model", ov["rl"])):
        if key in stage_ov:  # the chain's own wiring: each stage reads the folder of the one before
            raise ValueError(f"--set {key}: `run` sets it (each stage reads the stage before it); give your "
                             "data with prepare.source, sft.data, dpo.data, rl.data or eval.data_dir")
    # the user's own data (`--set sft.data=my.jsonl`) wins over the preset's; never silently replaced
    source = prep.source
    eval_dir = ev.data_dir or eval_dir
    validate(prep)
    make_suites(ev.suites, eval_dir)  # unknown suite names fail now, not after pre-training
    pre.data, sft.base, dpo.sft = str(out / "data"), str(out / "base"), str(out / "sft")
    rl.model = str(out / "dpo")
    if "data" not in ov["sft"]:
        sft.data = sft_data or sft.data
    if "data" not in ov["dpo"]:
        dpo.data = dpo_data or dpo.data
    if op.samples > 0:  # DPO then reads the pairs with the SFT model's own failing answers as rejections
        op.model, op.data = str(out / "sft"), dpo.data
        dpo.data = str(out / "onpolicy" / "preferences.jsonl")
    if not rl.anchor_data:  # what RL keeps where it has no reward: the conversations SFT taught
        rl.anchor_data, rl.anchor_split = sft.data, sft.split
    if "data" not in ov["rl"] and world:
        rl.data = str(out / "world" / "rl_gsm8k.jsonl")
    elif "data" not in ov["rl"] and data_dir:
        rl.data = str(Path(data_dir) / "eval" / "gsm8k" / "train.jsonl")  # the hub's train split, local
    for flag, path in (("prepare.source", source if "source" in ov["prepare"] else None),
                       ("sft.data", sft.data if "data" in ov["sft"] else None),
                       ("dpo.data", dpo.data if "data" in ov["dpo"] else None),
                       ("rl.data", rl.data if "data" in ov["rl"] else None), ("eval.data_dir", ev.data_dir)):
        if path and is_local(path) and not resolve_files(path):
            raise FileNotFoundError(f"--set {flag}={path}: no such file")
    with folder_lock(out):  # one `run` per folder (each training stage also locks its own sub-folder)
        _claim_run_folder(out, preset, set(redo))
        return _run(preset, out, world, source, prep, pre, sft, op, dpo, rl, ev, eval_dir, set(redo))


def _apply(prefix: str, cfg, overrides: dict[str, str]):
    """apply_overrides, each key one at a time so that an error names the --set key as the user wrote it."""
    for key, value in overrides.items():
        try:
            apply_overrides(cfg, {key: value})
        except ValueError as e:
            raise ValueError(f"--set {prefix}{key}: {e}") from None
    return validate(cfg)


def _preset_id(preset: str) -> str:
    """A preset as a run records it: its name, or the absolute path of a YAML file."""
    p = Path(preset)
    return str(p.resolve()) if p.suffix in (".yaml", ".yml") and p.is_file() else preset


def _claim_run_folder(out: Path, preset: str, redo: set[str]) -> None:
    """`out` is empty, or a run of this preset (run.json), or (--redo all) any earlier run: a run folder of
    another preset is refused, not rebuilt stage by stage over the user's work."""
    record = out / "run.json"
    before = None
    if record.is_file():
        before = read_json(record).get("preset")
    elif (out / "results.json").is_file():  # a run from before run.json
        before = read_json(out / "results.json").get("preset")
    else:
        other = sorted(p.name for p in out.iterdir()
                       if p.name not in (".lock", "world", "data", "base", "sft", "onpolicy", "dpo", "rl",
                                         "eval", "hf"))
        if other:
            raise FileExistsError(f"--out {out}: holds other files than a run's ({', '.join(other[:3])}); "
                                  "choose a new folder")
    if before is not None and before != _preset_id(preset) and "all" not in redo:
        raise FileExistsError(f"--out {out} is a run of preset {before}, not {preset}: choose another --out "
                              "(or --redo all to replace every stage in it)")
    atomic_write_json(record, {"preset": _preset_id(preset)})


def _run(preset: str, out: Path, world: dict | None, source: str, prep: PrepareConfig, pre, sft, op, dpo, rl,
         ev: EvalConfig, eval_dir: str | None, redo: set[str]) -> dict:
    # RL runs when the preset gives it steps (both presets do; `--set rl.train.max_steps=0` stops at DPO)
    stages = ["base", "sft", "dpo"] + (["rl"] if rl.train.max_steps > 0 else [])
    # (name, folder, settings, work(resume), resumable), in order; each stage's hash covers the one before
    chain: list[tuple[str, Path, dict, Callable[[bool], dict], bool]] = []
    if world:
        chain.append(("world", out / "world", world, lambda _: _make_world(out / "world", world), False))
    chain += [("data", out / "data", to_dict(prep), lambda _: prepare(prep), False),
              ("pretrain", out / "base", to_dict(pre),
               lambda resume: run_pretrain(pre, out / "base", resume=resume), True),
              ("sft", out / "sft", to_dict(sft), lambda resume: run_sft(sft, out / "sft", resume=resume),
               True)]
    if op.samples > 0:  # a minute of sampling; an interrupted one starts again
        chain.append(("onpolicy", out / "onpolicy", to_dict(op),
                      lambda _: onpolicy_pairs(op, out / "onpolicy"), False))
    chain.append(("dpo", out / "dpo", to_dict(dpo), lambda resume: run_dpo(dpo, out / "dpo", resume=resume),
                  True))
    if "rl" in stages:
        chain.append(("rl", out / "rl", to_dict(rl), lambda resume: run_rl(rl, out / "rl", resume=resume),
                      True))
    chain += [("eval", out / "eval", to_dict(ev) | {"data_dir": eval_dir},
               lambda _: _evaluate(out, ev, eval_dir, stages), True),
              ("export", out / "hf", {}, lambda _: _export(out, stages), False)]
    after, specs = "", []
    for name, folder, settings, _, _ in chain:
        key = settings | {"after": after}
        specs.append((name, folder, key))
        after = _hash(key, out)
    unknown = redo - {n for n, _, _ in specs} - {"all"}
    if unknown:
        raise ValueError(f"--redo {', '.join(sorted(unknown))}: no such stage here (stages: "
                         f"{', '.join(n for n, _, _ in specs)}, or all)")
    check_changes(specs, redo)  # before anything runs: no finished stage is deleted unasked

    timings: dict[str, float] = {}
    plan, summaries = _Plan(redo), {}
    for (name, folder, key), (_, _, _, work, resumable) in zip(specs, chain):
        summaries[name], _ = _stage(name, folder, key, work, timings, resumable, plan)
    table = summaries["eval"]
    inputs = {"pretrain": source, "sft": sft.data, "dpo": dpo.data, "rl": rl.data,
              "eval": eval_dir or "the hub"}
    results = {"preset": preset, "timings_s": timings, "inputs": inputs, "data": summaries["data"],
               "pretrain": summaries["pretrain"], "sft": summaries["sft"],
               "onpolicy": summaries.get("onpolicy"),
               "dpo": summaries["dpo"], "rl": summaries.get("rl"), "table": table,
               # what `llmrecipe eval` needs to reproduce the table (it reads them from the preset too)
               "eval_settings": to_dict(ev) | {"data_dir": eval_dir},
               "analogs": bool(world) and eval_dir == str(out / "world" / "eval"),
               "environment": environment(),
               "export": summaries["export"]}
    atomic_write_json(out / "results.json", results)
    write_report(out, results)
    print(table["markdown"])
    print(f"report: {out / 'report.md'}")
    return results


def _world_config(p: dict, overrides: dict[str, str]) -> dict | None:
    """The preset's generated-world settings with `world.*` overrides (None for presets on real data)."""
    world = p.get("world")
    if not world:
        return None
    unknown = set(overrides) - set(world)
    if unknown:
        raise ValueError(f"unknown config key(s) world.{', world.'.join(sorted(unknown))} "
                         f"(known: {', '.join(world)})")
    world = dict(world)
    for key, text in overrides.items():
        try:
            world[key] = int(text)
        except ValueError:
            raise ValueError(f"config key 'world.{key}': cannot read {text!r} as an integer") from None
    for key, v in world.items():  # every count must be at least one item: an empty world trains nothing
        low, high = WORLD_RANGES.get(key, (1, None))
        if v < low or (high is not None and v > high):
            raise ValueError(f"config key 'world.{key}' = {v}: must be "
                             + (f"{low}-{high}" if high is not None else f"≥ {low}"))
    return world


# The world settings that are not counts of items (those must be ≥ 1): (lowest, highest or None).
WORLD_RANGES = {"seed": (0, None), "arithmetic_percent": (0, MAX_ARITHMETIC_PERCENT), "digit_sums": (0, 1)}


def _inputs(p: dict, out: Path, data_dir: str | None) -> tuple[str, str | None, str | None, str | None]:
    """(pre-training source, SFT data, preference data, eval data dir); None: the stage's own hub default."""
    if p.get("world"):
        w = out / "world"
        return str(w / "pretrain.jsonl"), str(w / "sft.jsonl"), str(w / "preferences.jsonl"), str(w / "eval")
    if data_dir:  # the real loaders on local copies of the hub's parquet files
        d = Path(data_dir)
        return (*(str(d / DATA_DIR_LAYOUT[k]) for k in ("pretrain", "sft", "dpo")), str(d / "eval"))
    return p["prepare"]["source"], None, None, None


def _make_world(folder: Path, world: dict) -> dict:
    write_pretrain_corpus(folder / "pretrain.jsonl", world["pretrain_docs"], world["seed"],
                          world.get("arithmetic_percent", 25), bool(world.get("digit_sums", 0)))
    write_chat_data(folder, world["sft_conversations"], world["preference_pairs"], world["seed"])
    write_rl_problems(folder / "rl_gsm8k.jsonl", world.get("rl_problems", 2000), world["seed"])
    write_eval_sets(folder / "eval", world["seed"], world["eval_items"])
    return {k: v for k, v in world.items()}


def _export(out: Path, stages: list[str]) -> dict:
    """A Hugging Face folder per stage (hf/base, hf/sft, hf/dpo, hf/rl), for lm-eval, vLLM or transformers."""
    try:
        import transformers  # noqa: F401  (the export's one optional dependency)
    except ImportError:
        print("[export] skipped: `pip install transformers` to write Hugging Face folders")
        return {"skipped": "transformers is not installed"}
    from .checkpoint import load_model
    from .export import export_hf

    for name in stages:
        model, tok = load_model(out / name)
        export_hf(out / "hf" / name, model.eval(), tok)
    return {"folders": [str(out / "hf" / n) for n in stages]}


def _evaluate(out: Path, ev: EvalConfig, eval_dir: str | None, stages: list[str]) -> dict:
    suites = make_suites(ev.suites, eval_dir, max_new_tokens=ev.max_new_tokens, scoring=ev.scoring,
                         shots=ev.shots)
    names = [s.name for s in suites]
    results = {}
    for name in stages:
        model = load_eval_model(str(out / name), name=name, batch_size=ev.batch_size)
        results[model.name] = evaluate(model, suites, out / "eval" / f"{model.name}.json", ev.limit)
    markdown = write_table(results, names, out / "eval" / "table.md")
    return {"suites": names, "markdown": markdown, "scores": {m: r["suites"] for m, r in results.items()},
            "comparisons": comparisons(results, names)}
