"""`llmrecipe` command line: argument parsing only; the work happens in the stage modules.

Each command is a pair side by side: `_add_NAME(sub)` declares its flags, `cmd_NAME(args)` handles them;
COMMANDS at the bottom lists the pairs in the order `--help` shows them."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .data.sources import DataError

USER_ERRORS = (DataError, ValueError, FileNotFoundError, FileExistsError, KeyError)


def _number(kind, low, high=None, low_open=False, what=""):
    """An argparse type that range-checks, so a bad flag is argparse's one-line error naming the flag, not
    a silent clamp (temperature -1 sampled greedily, --limit 0 divided by zero) or a traceback."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{'n integer' if kind is int else ' number'}: {text!r}")
        if v < low or (low_open and v == low) or (high is not None and v > high):
            bound = f"{'>' if low_open else '≥'} {low}" + (f" and ≤ {high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bound}{what}, got {text}")
        return v
    return parse


POSITIVE = _number(int, 1)
TEMPERATURE = _number(float, 0.0, what=" (0 = greedy)")
TOP_K = _number(int, 0, what=" (0 = off)")
TOP_P = _number(float, 0.0, 1.0, low_open=True)


def _add_train_common(p, default_help: str) -> None:
    p.add_argument("--preset", help=f"config preset name or YAML path (default: {default_help})")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, final model)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    # --report-to (TRL's name) is the spelling torchrun lets through: its own parser takes `--log` for an
    # abbreviation of its --log-dir/--logs-specs and stops with "ambiguous option"
    p.add_argument("--log", "--report-to", dest="log",
                   help="live trackers besides metrics.jsonl: tensorboard, wandb, or both (comma-separated); "
                   "under torchrun write --report-to")


HELP = """The whole LLM recipe in one package: pre-train a GPT-2 from scratch, LoRA SFT, DPO, RL with
verifiable rewards (GRPO), evaluation (MMLU-Pro, GSM8K, IFEval, MT-Bench), a report."""
EPILOG = """start here:
  llmrecipe run --preset tiny --out runs/demo        the whole recipe on CPU in minutes: runs/demo/report.md
  llmrecipe chat --model runs/demo/rl                talk to a stage's model
  llmrecipe serve --model runs/demo/base --adapter rl=runs/demo/rl     an OpenAI-compatible server
  llmrecipe eval --compare base=runs/demo/base rl=runs/demo/rl --data-dir runs/demo/world/eval
`llmrecipe COMMAND --help` lists a command's flags; README.md and docs/ explain each stage."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llmrecipe")
    except PackageNotFoundError:  # run from a source tree (PYTHONPATH=src)
        return "unknown (not installed)"


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize a corpus into training shards")
    kinds = p.add_subparsers(dest="kind", required=True)
    fw = kinds.add_parser("fineweb", help="stream HuggingFaceFW/fineweb-edu (sample-10BT) from the hub")
    fw.add_argument("--name", default="sample-10BT", help="fineweb-edu config (default sample-10BT)")
    tx = kinds.add_parser("text", help="local parquet/jsonl/json/txt files with a `text` column, or a hub id")
    tx.add_argument("--input", nargs="+", required=True,
                    help="files, folders or globs (or one hub data set id)")
    tx.add_argument("--text-field", default="text")
    tx.add_argument("--split", default="train", help="hub split (hub ids only)")
    for k in (fw, tx):
        k.add_argument("--out", required=True, help="folder for the shards")
        k.add_argument("--preset", help="take tokenizer settings from a preset's `prepare` section")
        k.add_argument("--tokenizer", help="gpt2 | gpt2:FILE.tiktoken | bpe (train one) | bpe:FILE.json")
        k.add_argument("--vocab-size", type=int, help="vocabulary of a trained bpe tokenizer")
        k.add_argument("--max-tokens", type=int, help="stop after this many training tokens")
        k.add_argument("--shard-tokens", type=int, help="tokens per shard (default 100M)")
        k.add_argument("--val-every", type=int, help="every N-th document goes to the validation shard")
        k.add_argument("--workers", type=int, help="tokenizer processes")
        k.add_argument("--overwrite", action="store_true",
                       help="replace an earlier prepare's output in --out (only its own files)")


def cmd_prepare(args) -> None:
    from .config import build, load_preset, validate
    from .data.prepare import FINEWEB, PrepareConfig, prepare

    settings = dict(load_preset(args.preset).get("prepare", {})) if args.preset else {}
    if args.kind == "fineweb":
        settings.update(FINEWEB, config=args.name)
    else:
        settings.update(source=args.input if len(args.input) > 1 else args.input[0],
                        text_field=args.text_field, split=args.split)
    for key, val in dict(tokenizer=args.tokenizer, bpe_vocab_size=args.vocab_size, max_tokens=args.max_tokens,
                         shard_tokens=args.shard_tokens, val_every=args.val_every, workers=args.workers,
                         overwrite=args.overwrite or None).items():
        if val is not None:
            settings[key] = val
    meta = prepare(validate(build(PrepareConfig, {**settings, "out": args.out})))
    print(f"wrote {meta['train_tokens']:,} training + {meta['val_tokens']:,} validation tokens from "
          f"{meta['documents']:,} documents to {args.out} ({len(meta['train_shards'])} train shards)")


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pre-training: a GPT-2 from scratch")
    p.add_argument("--data", help="shard folder from `llmrecipe prepare`")
    _add_train_common(p, "tiny")


def cmd_pretrain(args) -> None:
    from .config import apply_overrides, parse_overrides
    from .train import stage_config
    from .train.pretrain import run_pretrain

    if not args.preset:
        print("pretrain: no --preset given, using tiny (the CPU-sized model); "
              "--preset gpt2-124m is GPT-2 small")
    cfg = stage_config("pretrain", args.preset or "tiny")
    if args.data:
        cfg.data = args.data
    if args.log:
        cfg.train.log = args.log
    apply_overrides(cfg, parse_overrides(args.set))
    _train_out(args.out, {"--data": cfg.data}, args.resume)
    last = run_pretrain(cfg, args.out, resume=args.resume)
    print(f"done: {args.out} (last: " + ", ".join(f"{k}={v}" for k, v in last.items()) + ")")


def _tune(args, run, fields: tuple[str, ...], parent: str | None, stage: str) -> None:
    """Shared by sft and dpo: preset (by default the one `parent` was trained with) → flags → --set → run."""
    from .checkpoint import model_record
    from .config import apply_overrides, choose_preset, parse_overrides
    from .train import stage_config

    if not parent:
        flag = {"sft": "--base", "dpo": "--sft", "rl": "--model"}[stage]
        raise ValueError(f"{stage} needs {flag}: the model folder it starts from")
    model, recorded = model_record(parent)
    preset, why = choose_preset(args.preset, model, recorded, parent)
    print(f"{stage}: preset {preset} ({why})")
    cfg = stage_config(stage, preset)
    for key in fields:
        val = getattr(args, key, None)
        if val is not None and val is not False:
            setattr(cfg, key, val)
    if args.lr is not None:
        cfg.train.lr = args.lr
    if args.log:
        cfg.train.log = args.log
    apply_overrides(cfg, parse_overrides(args.set))
    flag = {"sft": "--base", "dpo": "--sft", "rl": "--model"}[stage]
    _train_out(args.out, {flag: _chain(parent), "--data": cfg.data,
                       "--anchor-data": getattr(cfg, "anchor_data", None)}, args.resume)
    last = run(cfg, args.out, resume=args.resume)
    print(f"done: adapter in {args.out} (last: " + ", ".join(f"{k}={v}" for k, v in last.items()) + ")")


def _add_sft(sub) -> None:
    p = sub.add_parser("sft", help="SFT: LoRA instruction tuning on chat data")
    p.add_argument("--base", help="model folder from `llmrecipe pretrain`")
    p.add_argument("--data", help="hub id (HuggingFaceH4/ultrachat_200k) or local parquet/jsonl/json files")
    p.add_argument("--split", help="hub split (default train_sft)")
    p.add_argument("--epochs", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--strict", action="store_true", help="reject bad rows instead of skipping them")
    _add_train_common(p, "the preset --base was trained with")


def cmd_sft(args) -> None:
    from .train.sft import run_sft

    _tune(args, run_sft, ("base", "data", "split", "epochs", "strict"), args.base, "sft")


def _add_dpo(sub) -> None:
    p = sub.add_parser("dpo", help="DPO: preference tuning, a fresh LoRA on the SFT model")
    p.add_argument("--sft", help="adapter folder from `llmrecipe sft` (or any model folder)")
    p.add_argument("--data",
                   help="hub id (HuggingFaceH4/ultrafeedback_binarized) or local files (UFB or HH format)")
    p.add_argument("--split", help="hub split (default train_prefs)")
    p.add_argument("--beta", type=float)
    p.add_argument("--epochs", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--reference", choices=["adapter", "copy"], help="reference = policy with LoRA disabled "
                   "(default, no extra memory) or a frozen copy")
    p.add_argument("--precompute-reference", action="store_true", help="score the reference once, cache it")
    p.add_argument("--strict", action="store_true", help="reject bad rows instead of skipping them")
    _add_train_common(p, "the preset --sft was trained with")


def cmd_dpo(args) -> None:
    from .train.dpo import run_dpo

    _tune(args, run_dpo, ("sft", "data", "split", "beta", "epochs", "reference",
                                   "precompute_reference", "strict"), args.sft, "dpo")


def _add_onpolicy(sub) -> None:
    p = sub.add_parser("onpolicy", help="between SFT and DPO: replace rejections by the SFT model's own "
                       "failing samples (rows with IFEval-style checks)")
    p.add_argument("--sft", required=True, help="the SFT folder to sample from")
    p.add_argument("--data", required=True, help="preference pairs (.jsonl) whose rows carry "
                   "instruction_id_list + kwargs (and optionally must_state)")
    p.add_argument("--out", required=True, help="folder for preferences.jsonl (then: dpo --data it)")
    p.add_argument("--samples", type=int, default=4, help="answers sampled per checkable prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


def cmd_onpolicy(args) -> None:
    from .train.onpolicy import OnPolicyConfig, onpolicy_pairs

    from .files import check_out

    cfg = OnPolicyConfig(samples=args.samples, temperature=args.temperature,
                         max_new_tokens=args.max_new_tokens, seed=args.seed, model=args.sft, data=args.data,
                         device=args.device)
    check_out(args.out, {"--sft": _chain(args.sft), "--data": args.data})
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)  # an --out that cannot be written fails now, not after sampling
    if folder.is_dir() and {p.name for p in folder.iterdir()} - {"preferences.jsonl", ".lock"}:
        raise FileExistsError(f"--out {args.out}: holds other files than an earlier onpolicy's "
                              "preferences.jsonl; choose a new folder")
    summary = onpolicy_pairs(cfg, args.out)
    print(f"done: {Path(args.out) / 'preferences.jsonl'} ({summary['replaced']:,} of {summary['rows']:,} "
          "rejections sampled)")


def _add_rl(sub) -> None:
    p = sub.add_parser("rl", help="RL with verifiable rewards (GRPO) on word problems, a fresh LoRA")
    p.add_argument("--model", help="model or adapter folder to start from (e.g. runs/dpo)")
    p.add_argument("--data", help="hub id (openai/gsm8k) or local .jsonl/.parquet files in its schema")
    p.add_argument("--data-dir", help="a folder holding gsm8k/train.jsonl (the layout of shared/data/eval)")
    p.add_argument("--split", help="hub split (default train)")
    p.add_argument("--group-size", type=int, help="answers sampled per question (G)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--anchor-data", help="chat conversations (ultrachat schema) whose replies RL keeps "
                   "close to the starting model, e.g. the SFT data (`run` passes it; needed when "
                   "anchor_beta > 0)")
    _add_train_common(p, "the preset --model was trained with")


def cmd_rl(args) -> None:
    from .train.rl import run_rl

    if args.data_dir:
        args.data = str(Path(args.data_dir) / "gsm8k" / "train.jsonl")
    _tune(args, run_rl, ("model", "data", "split", "group_size", "max_new_tokens", "anchor_data"),
          args.model, "rl")


def _add_chat(sub) -> None:
    p = sub.add_parser("chat", help="interactive chat in the terminal")
    p.add_argument("--model", required=True, help="model folder or adapter folder (its base chain is "
                   "loaded); with --url, the served model's name")
    p.add_argument("--url", help="chat with a served model instead (e.g. http://127.0.0.1:8000/v1)")
    p.add_argument("--api-key", help="Bearer key for --url (default: $LLMRECIPE_API_KEY)")
    p.add_argument("--adapter", help="an adapter folder to apply on top of --model")
    p.add_argument("--system", help="system message")
    p.add_argument("--max-new-tokens", type=POSITIVE,
                   help="answer budget (default: a quarter of the model's context; cut to what fits)")
    p.add_argument("--temperature", type=TEMPERATURE, default=0.7)
    p.add_argument("--top-k", type=TOP_K, default=50)
    p.add_argument("--top-p", type=TOP_P, default=None)
    p.add_argument("--device", default="auto")


def cmd_chat(args) -> None:
    if args.url:
        from .serve import chat_remote

        sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
        key = args.api_key or os.environ.get("LLMRECIPE_API_KEY")
        return chat_remote(args.url, args.model, args.system, sampling, key)
    from .chat import chat_repl
    from .checkpoint import load_model
    from .runtime import setup

    rt = setup(args.device)
    model, tok = load_model(args.model, rt.device, adapter=args.adapter)
    chat_repl(model.eval(), tok, rt, args.system,
              dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p))


def _chain(path: str | None) -> list[str]:
    """A model or adapter folder and every folder its adapter chain loads (all of them are inputs)."""
    from .checkpoint import adapter_chain

    if not path:
        return []
    try:
        root, chain = adapter_chain(path)
    except (ValueError, OSError):
        return [path]
    return [path, str(root), *map(str, chain)]


# What the training loop itself writes into a run folder before its first checkpoint
_TRAIN_OWN = {".lock", "config.json", "metrics.jsonl", "tb", "wandb", "wandb_state.json", "checkpoints"}


def _train_out(out: str, inputs: dict, resume: bool) -> None:
    """A training command's --out, checked before any data is read: outside its inputs; with checkpoints
    only under --resume; else holding nothing but an interrupted start of its own."""
    from .checkpoint import has_checkpoints
    from .files import check_out, folder_kind

    check_out(out, inputs)
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"--out {out}: exists and is not a folder")
    if has_checkpoints(folder) and not resume:
        raise FileExistsError(f"{out} already holds checkpoints: pass --resume to continue it, or choose "
                              "another --out")
    if folder.is_dir() and not has_checkpoints(folder):
        other = sorted(p.name for p in folder.iterdir() if p.name not in _TRAIN_OWN)
        if other:
            raise FileExistsError(f"--out {out}: already holds {folder_kind(folder)} ({', '.join(other[:3])}"
                                  "); choose a new folder (nothing there is overwritten)")


def _replaceable(out: str, kind: str | None, what: str) -> None:
    """An output folder of a kind this command writes (`kind`; None: none is replaceable) is replaced with
    a note; any other non-empty folder is an error."""
    from .files import check_fresh_out

    if check_fresh_out(out, allowed=kind):
        print(f"note: replacing the {what} in {out}", file=sys.stderr)


def _add_merge(sub) -> None:
    p = sub.add_parser("merge", help="fold an adapter into its base and save a plain model folder")
    p.add_argument("--model", required=True)
    p.add_argument("--adapter", help="adapter folder (omit when --model is itself an adapter folder)")
    p.add_argument("--out", required=True)
    p.add_argument("--hf", action="store_true",
                   help="also write a Hugging Face GPT2LMHeadModel folder in OUT/hf")


def cmd_merge(args) -> None:
    from .checkpoint import load_model, model_record, save_model
    from .files import check_out, folder_kind, read_json

    check_out(args.out, {"--model": _chain(args.model), "--adapter": _chain(args.adapter)})
    merged = folder_kind(args.out) == "a model folder" and \
        read_json(Path(args.out) / "model.json").get("stage") == "merged"
    _replaceable(args.out, "a model folder" if merged else None, "earlier merge")
    if not args.adapter and (Path(args.model) / "model.json").is_file():
        raise ValueError(f"--model {args.model} is a plain model and no --adapter was given: "
                         "nothing to merge")
    model, tok = load_model(args.model, adapter=args.adapter, merge_adapters=True)
    preset = model_record(args.adapter or args.model)[1]
    save_model(args.out, model, tok,
               {"stage": "merged", "from": [args.model, args.adapter], "preset": preset})
    if args.hf:
        from .export import export_hf

        export_hf(f"{args.out}/hf", model, tok)
    print(f"merged model written to {args.out}")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="a complete Hugging Face folder: weights, config, tokenizer, "
                       "chat template")
    p.add_argument("--model", required=True,
                   help="model or adapter folder (an adapter's base chain is merged)")
    p.add_argument("--adapter", help="an adapter folder to merge on top of --model")
    p.add_argument("--out", required=True)
    p.add_argument("--gguf", action="store_true",
                   help="also write OUT/model.gguf for llama.cpp / Ollama (pip install 'llmrecipe[gguf]')")
    p.add_argument("--gguf-only", action="store_true", help="write only the GGUF (no transformers needed)")
    p.add_argument("--gguf-type", choices=["f32", "f16", "q8_0"], default="f32",
                   help="the GGUF's weight type (default f32: every weight exact)")


def cmd_export(args) -> None:
    from .checkpoint import load_model
    from .export import export_hf
    from .files import check_out

    check_out(args.out, {"--model": _chain(args.model), "--adapter": _chain(args.adapter)})
    gguf = args.gguf or args.gguf_only
    if gguf:
        try:
            import gguf as _  # noqa: F401  (checked before the model loads)
        except ImportError:
            raise ValueError("--gguf needs ggml's gguf package: pip install 'llmrecipe[gguf]'") from None
    folder = Path(args.out)
    if not (folder.is_dir() and all(p.suffix == ".gguf" or p.name == ".lock" for p in folder.iterdir())):
        _replaceable(args.out, "a Hugging Face folder", "earlier export")  # (an earlier GGUF alone: replaced)
    model, tok = load_model(args.model, adapter=args.adapter, merge_adapters=True)
    if not args.gguf_only:
        export_hf(args.out, model.eval(), tok)
        print(f"Hugging Face folder written to {args.out} "
              "(AutoModelForCausalLM / AutoTokenizer / lm_eval --model hf)")
    if gguf:
        from .gguf_file import write_gguf

        name = "model.gguf" if args.gguf_type == "f32" else f"model-{args.gguf_type}.gguf"
        path = write_gguf(Path(args.out) / name, model.eval(), tok, args.gguf_type,
                          name=Path(args.adapter or args.model).resolve().name)
        print(f"GGUF written to {path} (llama-cli -m {path} -cnv; docs/export.md)")


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="sample text from a model folder")
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", default="")
    p.add_argument("--max-new-tokens", type=POSITIVE,
                   help="default: a quarter of the model's context; cut to what fits after the prompt")
    p.add_argument("--temperature", type=TEMPERATURE, default=0.8)
    p.add_argument("--top-k", type=TOP_K, default=50)
    p.add_argument("--top-p", type=TOP_P, default=None)
    p.add_argument("--num-samples", type=POSITIVE, default=1)
    p.add_argument("--seed", type=_number(int, 0, 2**63 - 1), default=None)
    p.add_argument("--device", default="auto")


def cmd_generate(args) -> None:
    import torch

    from .checkpoint import load_model
    from .engine import Engine
    from .runtime import setup

    rt = setup(args.device)
    model, tok = load_model(args.model, rt.device)
    engine = Engine(model, tok, rt)  # the one sampling path (eval, serve, chat and RL use it too)
    from .engine import default_new_tokens, fit_new_tokens

    seed = args.seed if args.seed is not None else torch.seed() % 2**62
    ids = tok.encode(args.prompt) or [tok.eot_id]
    block = model.config.block_size
    requested = args.max_new_tokens or default_new_tokens(block)
    if len(ids) >= block:  # a prompt longer than the context: its end is what a continuation follows
        keep = block - min(requested, block // 2)
        print(f"note: the prompt is {len(ids):,} tokens, the context {block:,}: it keeps its last {keep:,}",
              file=sys.stderr)
        ids = ids[-keep:]
    budget, note = fit_new_tokens(len(ids), requested, block)
    if note and args.max_new_tokens:
        print(note, file=sys.stderr)
    outs = engine.generate([ids] * args.num_samples, budget, args.temperature, args.top_k, args.top_p,
                           seed=seed)
    for i, out in enumerate(outs):
        print(("-" * 40 + "\n") if i else "", args.prompt + tok.decode(out), sep="")


def _eval_settings(args, paths: list[str]):
    """The evaluation settings: those of the preset the models were trained with (what `run` used, so a
    standalone eval reproduces a run's table), or --preset's (`none`: the suites' own defaults); each flag
    given overrides its setting. Says which in one line."""
    from .checkpoint import model_record
    from .config import build, load_preset
    from .files import read_json
    from .recipe import EvalConfig

    preset, why = args.preset, "--preset"
    runs = {Path(p).resolve().parent for p in paths}
    record = runs.pop() / "results.json" if len(runs) == 1 else None
    if preset is None and record is not None and record.is_file():  # models of one `run`: its own settings
        settings = dict(read_json(record).get("eval_settings") or {})
        if settings:
            ev = build(EvalConfig, settings)
            if args.data_dir is None:
                args.data_dir = ev.data_dir
            return _eval_overrides(args, ev, f"run {record.parent} (its results.json)")
    if preset is None:
        recorded = {model_record(p)[1] for p in paths} - {None}
        if len(recorded) == 1:
            preset, why = recorded.pop(), "the preset the model was trained with"
        elif recorded:
            print(f"note: the models come from presets {', '.join(sorted(recorded))}: using the suites' own "
                  "settings (pass --preset to choose)", file=sys.stderr)
    ev = build(EvalConfig, load_preset(preset).get("eval") or {}) if preset and preset != "none" \
        else EvalConfig()
    source = f"preset {preset} ({why})" if preset and preset != "none" else "the suites' defaults"
    return _eval_overrides(args, ev, source)


def _eval_overrides(args, ev, source: str):
    """Each evaluation flag given overrides its setting; one line says what the evaluation runs with."""
    for flag, key in (("suites", "suites"), ("mmlu_scoring", "scoring"), ("max_new_tokens", "max_new_tokens"),
                      ("batch_size", "batch_size"), ("limit", "limit"), ("shots", "shots")):
        if getattr(args, flag) is not None:
            setattr(ev, key, getattr(args, flag))
    shown = ", ".join(f"{k} {v}" for k, v in (("suites", ev.suites), ("scoring", ev.scoring),
                                              ("shots", ev.shots), ("max_new_tokens", ev.max_new_tokens),
                                              ("limit", ev.limit), ("batch", ev.batch_size)) if v is not None)
    print(f"eval: {source} — {shown}; flags override each", flush=True)
    return ev


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluation: one model, or several compared in a table")
    p.add_argument("--model", help="model or adapter folder")
    p.add_argument("--adapter", help="adapter folder applied on top of --model")
    p.add_argument("--compare", nargs="+", metavar="NAME=PATH",
                   help="e.g. base=runs/base sft=runs/sft dpo=runs/dpo")
    p.add_argument("--suites", help="comma-separated: mmlu_pro,gsm8k,ifeval,mt_bench,mmlu_pro_category "
                   "(all: the first four; default: the preset's, else all)")
    p.add_argument("--preset", help="take the evaluation settings from this preset's eval: section "
                   "(default: the preset the model was trained with; none: the suites' own defaults)")
    p.add_argument("--shots", type=_number(int, 0), help="few-shot exemplars for mmlu_pro and gsm8k")
    p.add_argument("--limit", type=POSITIVE,
                   help="first N items per suite (stratified by category where there is one)")
    p.add_argument("--data-dir",
                   help="local copies in the hub's schema (e.g. ../shared/data/eval); default: the hub")
    p.add_argument("--out",
                   help="summary JSON (single model; default MODEL/eval.json) or table path (--compare)")
    p.add_argument("--prompting", choices=["auto", "chat", "plain"], default="auto",
                   help="force the chat template or plain few-shot text (default: chat for SFT/DPO models)")
    p.add_argument("--mmlu-scoring", choices=["letter", "text"],
                   help="rank option letters (default) or texts")
    p.add_argument("--max-new-tokens", type=POSITIVE,
                   help="generation budget for gsm8k / ifeval (ifeval default 1280)")
    p.add_argument("--batch-size", type=POSITIVE, help="prompts per forward (default: the preset's, or 16)")
    p.add_argument("--device", default="auto")
    _add_judge(p)


def _add_judge(p) -> None:
    """The LLM judge's flags (eval's mt_bench suite, mt-bench)."""
    p.add_argument("--judge-model", help="judge model name (OpenAI's API unless --judge-url)")
    p.add_argument("--judge-url", help="any OpenAI-compatible base URL, e.g. http://127.0.0.1:8001/v1")
    p.add_argument("--judge-api-key-file", help="file holding the --judge-url server's key (default: "
                   "$LLMRECIPE_JUDGE_API_KEY; $OPENAI_API_KEY is only ever sent to OpenAI)")
    p.add_argument("--judge-cache", help="verdict cache file (default ~/.cache/llmrecipe/judge.jsonl)")
    p.add_argument("--judge-concurrency", type=POSITIVE, default=8)
    p.add_argument("--judge-timeout", type=_number(float, 0.0, low_open=True), default=120.0)


def cmd_eval(args) -> None:
    from .eval import make_suites
    from .eval.harness import evaluate, load_eval_model, write_table
    from .runtime import setup

    if bool(args.model) == bool(args.compare):
        raise ValueError("eval needs either --model or --compare NAME=PATH ...")
    if args.out and Path(args.out).is_dir():  # found now, not after the evaluation ran
        raise FileExistsError(f"--out {args.out} is a folder: give a file path ("
                              + ("summary JSON)" if args.model else "the table, e.g. table.md)"))
    pairs = [_name_path(item, "--compare") for item in args.compare or []]
    names = [n for n, _ in pairs]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"--compare names {', '.join(twice)} twice: each column needs its own name")
    ev = _eval_settings(args, [args.adapter or args.model] if args.model else [p for _, p in pairs])
    rt = setup(args.device)
    chat = {"auto": None, "chat": True, "plain": False}[args.prompting]
    suites = make_suites(ev.suites, args.data_dir, scoring=ev.scoring, max_new_tokens=ev.max_new_tokens,
                         shots=ev.shots, judge=_judge(args))
    if any(s.name == "mt_bench" and not s.active for s in suites):
        from .eval.mt_bench import NO_JUDGE_HINT

        print(f"mt_bench: n/a (no judge). {NO_JUDGE_HINT}")
    if args.model:
        m = load_eval_model(args.model, args.adapter, chat, rt=rt, batch_size=ev.batch_size)
        evaluate(m, suites, args.out or Path(args.model) / "eval.json", ev.limit)
        return
    table = Path(args.out or "table.md")
    results = {}
    for name, path in pairs:  # records beside the table (table.NAME.json, …), never in a model's folder
        m = load_eval_model(path, None, chat, name=name, rt=rt, batch_size=ev.batch_size)
        results[name] = evaluate(m, suites, table.with_name(f"{table.stem}.{name}.json"), ev.limit)
    if rt.is_main:
        print(write_table(results, [s.name for s in suites], table))


def _name_path(item: str, flag: str) -> tuple[str, str]:
    """NAME=PATH, as --compare, --adapter, --a and --b take it."""
    name, _, path = item.partition("=")
    if not name.strip() or not path:
        raise ValueError(f"{flag} expects NAME=PATH, got {item!r}")
    return name.strip(), path


def read_secret(path: str) -> str:
    """A key from a file's first line (a key in argv is visible to every user through `ps`)."""
    try:
        key = Path(path).read_text().strip().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the key ({e})") from None
    if not key or not key[0].strip():
        raise ValueError(f"{path}: the key file is empty")
    return key[0].strip()


def _judge(args):
    from .eval.judge import DEFAULT_CACHE, OPENAI_URL, Judge

    if not args.judge_model:
        return None
    key = read_secret(args.judge_api_key_file) if args.judge_api_key_file else None
    return Judge(args.judge_model, args.judge_url or OPENAI_URL, timeout=args.judge_timeout,
                 concurrency=args.judge_concurrency, cache_path=args.judge_cache or DEFAULT_CACHE,
                 api_key=key)


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible server and chat page: a model plus named adapters")
    p.add_argument("--model", help="model folder (or an adapter folder, served merged)")
    p.add_argument("--run", help="a run folder: serve its stages as base, sft, dpo, rl, and its results on "
                   "the page's run tab")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                   help="a named adapter, selected by the request's model field (repeatable)")
    p.add_argument("--name", help="the model id of --model itself (default: its folder's name, e.g. rl)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_number(int, 0, 65535), default=8000, help="0: any free port")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (visible in `ps`: prefer "
                   "--api-key-file or $LLMRECIPE_API_KEY)")
    p.add_argument("--api-key-file", help="file holding the key (first line)")
    p.add_argument("--device", default="auto")


def cmd_serve(args) -> None:
    from .serve import run_models, serve

    if bool(args.model) == bool(args.run):
        raise ValueError("serve needs --model MODEL (with any --adapter NAME=PATH) or --run RUN, not both")
    adapters, model, name = {}, args.model, args.name
    if args.run:
        model, adapters = run_models(args.run)
        name = name or "base"
    name = name or Path(model).resolve().name
    for item in args.adapter:
        alias, path = _name_path(item, "--adapter")
        if alias in adapters or alias == name:
            raise ValueError(f"--adapter {item}: the name {alias!r} is taken; give each model its own")
        adapters[alias] = path
    key = args.api_key or (read_secret(args.api_key_file) if args.api_key_file
                        else os.environ.get("LLMRECIPE_API_KEY"))
    serve(model, adapters, args.host, args.port, key, args.device, name, run_dir=args.run)


def _add_mt_bench(sub) -> None:
    p = sub.add_parser("mt-bench", help="MT-Bench pairwise comparison of two models")
    p.add_argument("mode", choices=["pairwise"])
    p.add_argument("--a", required=True, metavar="NAME=PATH")
    p.add_argument("--b", required=True, metavar="NAME=PATH")
    p.add_argument("--data-dir", required=True,
                   help="folder holding mt_bench/ (question.jsonl, judge_prompts.jsonl)")
    p.add_argument("--limit", type=POSITIVE)
    p.add_argument("--max-new-tokens", type=POSITIVE, default=1024)
    p.add_argument("--out", help="write the verdicts as JSON here")
    p.add_argument("--device", default="auto")
    _add_judge(p)


def cmd_mt_bench(args) -> None:
    import json

    from .eval.harness import load_eval_model
    from .eval.mt_bench import NO_JUDGE_HINT, pairwise
    from .runtime import setup

    judge = _judge(args)
    if judge is None or not judge.configured:
        raise ValueError(NO_JUDGE_HINT)
    rt = setup(args.device)
    models = []
    for spec, flag in ((args.a, "--a"), (args.b, "--b")):
        name, path = _name_path(spec, flag)
        models.append(load_eval_model(path, None, True, name=name, rt=rt))
    res = pairwise(models[0], models[1], judge, args.data_dir, args.limit, args.max_new_tokens)
    print(f"{res['a']} vs {res['b']} (judge {res['judge']}, {res['comparisons']} comparisons, both orders): "
          f"win {res['win']}, tie {res['tie']}, loss {res['loss']} "
          f"({res['inconsistent']} inconsistent, {res['unparseable']} unparseable counted as ties"
          + (f"; the judge failed on {res['judge_failed']}, not counted: rerun to judge them"
             if res["judge_failed"] else "") + ")")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


def _add_ifeval_score(sub) -> None:
    p = sub.add_parser("ifeval-score", help="score any model's IFEval responses (official JSONL format)")
    p.add_argument("--responses", required=True, help='JSONL lines {"prompt": ..., "response": ...}')
    p.add_argument("--data-dir",
                   help="folder holding ifeval/input_data.jsonl (default: google/IFEval from the hub)")
    p.add_argument("--out", help="also write per-prompt verdicts as JSONL here")


def cmd_ifeval_score(args) -> None:
    import json

    from .eval.ifeval import report, score_file

    summary, records = score_file(args.responses, args.data_dir)
    print(report(summary))
    for iid, acc in summary["per_instruction_strict"].items():
        print(f"  {iid:48s} {acc:.2%}")
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)


def _add_preset(sub) -> None:
    p = sub.add_parser("preset", help="presets: list them, or print one resolved (to copy and edit)")
    p.add_argument("action", choices=["show", "list"])
    p.add_argument("name", nargs="?", help="a preset name or YAML file (show)")


def cmd_preset(args) -> None:
    from .config import PRESET_DIR, show_preset

    if args.action == "list":
        print("\n".join(sorted(f.stem for f in PRESET_DIR.glob("*.yaml"))))
        return
    if not args.name:
        raise ValueError("preset show needs a NAME (llmrecipe preset list names them)")
    print(f"# llmrecipe preset show {args.name}: copy, edit, and run with --preset FILE.yaml\n"
          f"# (or start a file with `extends: {args.name}` and keep only what you change)")
    print(show_preset(args.name), end="")


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="the whole recipe in one command, with a report")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--out", required=True)
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys: max_steps=100 (pre-training), sft.epochs=1, dpo.beta=0.2, "
                   "eval.limit=20")
    p.add_argument("--data-dir",
                   help="local copies of every data set in the hub's schema (e.g. ../shared/data)")
    p.add_argument("--log", help="live trackers for every stage: tensorboard, wandb or tensorboard,wandb")
    p.add_argument("--redo", nargs="+", action="extend", default=[], metavar="STAGE",
                   help="finished stages to do again, and every stage after them (world, data, pretrain, "
                   "sft, onpolicy, dpo, rl, eval, export, or all); a finished stage whose settings changed "
                   "is otherwise an error, never silently redone")


def cmd_run(args) -> None:
    from .config import parse_overrides
    from .recipe import run

    overrides = parse_overrides(args.set)
    if args.log:  # every training stage logs to the trackers
        trackers = {f"{s}.train.log": args.log for s in ("sft", "dpo", "rl")}
        overrides = {"log": args.log, **trackers, **overrides}
    run(args.preset, args.out, overrides, args.data_dir, redo=set(args.redo))


# name -> (adds its sub-parser and flags, handles it); --help lists them in this order
COMMANDS = {
    "prepare": (_add_prepare, cmd_prepare),
    "pretrain": (_add_pretrain, cmd_pretrain),
    "generate": (_add_generate, cmd_generate),
    "sft": (_add_sft, cmd_sft),
    "dpo": (_add_dpo, cmd_dpo),
    "onpolicy": (_add_onpolicy, cmd_onpolicy),
    "rl": (_add_rl, cmd_rl),
    "chat": (_add_chat, cmd_chat),
    "merge": (_add_merge, cmd_merge),
    "export": (_add_export, cmd_export),
    "eval": (_add_eval, cmd_eval),
    "serve": (_add_serve, cmd_serve),
    "mt-bench": (_add_mt_bench, cmd_mt_bench),
    "ifeval-score": (_add_ifeval_score, cmd_ifeval_score),
    "preset": (_add_preset, cmd_preset),
    "run": (_add_run, cmd_run),
}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llmrecipe", description=HELP, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"llmrecipe {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return ap


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    """--quiet on every command (and sub-command): no progress lines, only results and errors."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_quiet(sub)
            return
    parser.add_argument("--quiet", action="store_true", help="no progress lines (results and errors only)")


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    _add_quiet(parser)
    args = parser.parse_args(argv)
    if getattr(args, "quiet", False):
        from . import progress

        progress.QUIET = True
    try:
        COMMANDS[args.command][1](args)
    except USER_ERRORS as e:
        if os.environ.get("LLMRECIPE_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        sys.exit(f"error: {msg}")
    except (ConnectionError, OSError) as e:
        if os.environ.get("LLMRECIPE_DEBUG"):
            raise
        sys.exit(f"error: {_os_error(e)}")


def _os_error(e: OSError) -> str:
    """One line for what the file system or the network refused (a folder under /dev/null, a closed
    port, no network for the hub)."""
    import urllib.error

    if isinstance(e, urllib.error.HTTPError):  # the server's own message, when it sent one (OpenAI's shape)
        try:
            said = json.loads(e.read())["error"]["message"]
        except Exception:
            said = e.reason
        return f"{e.url}: HTTP {e.code}: {said}"
    if isinstance(e, urllib.error.URLError):
        return f"cannot reach the server ({e.reason}): is it running, and is the --url right?"
    if isinstance(e, ConnectionError) or "connect" in type(e).__name__.lower():
        return (f"{e} — no network? Give local files instead: a path for --data/--input, or --data-dir "
                "with copies in the hub's layout (docs/data.md)")
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}"


if __name__ == "__main__":
    main()
