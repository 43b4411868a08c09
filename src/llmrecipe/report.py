"""The run's report: report.md, and PNG plots of every stage's curves and of the base/SFT/DPO table."""
from __future__ import annotations

import math
import os
from pathlib import Path

from .eval.harness import comparisons_markdown
from .files import atomic_write_text, read_jsonl


def _metrics(folder: Path) -> list[dict]:
    f = folder / "metrics.jsonl"
    return read_jsonl(f)


def _smooth(values: list[float], beta: float = 0.9) -> list[float]:
    """An exponential moving average, bias-corrected as TensorBoard's (early points not pulled to 0)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** i))
    return out


def plot_curves(out: Path) -> list[str]:
    """loss_<stage>.png for each training stage, raw and smoothed; DPO also reward accuracy and margin, RL
    its reward, pass@G, KL to the starting model and answer length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    extra = {"dpo": ["rewards/accuracy", "rewards/margin"], "rl": ["reward", "pass@G", "kl", "answer_tokens"]}
    for stage, folder in (("pretrain", "base"), ("sft", "sft"), ("dpo", "dpo"), ("rl", "rl")):
        recs = [r for r in _metrics(out / folder) if "loss" in r]
        if not recs:
            continue
        pass_g = next((k for k in recs[-1] if k.startswith("pass@") and k != "pass@1"), None)
        keys = [k for k in ["loss"] + [pass_g if k == "pass@G" else k for k in extra.get(stage, [])]
                if k and k in recs[-1]]
        fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
        for ax, k in zip(axes[0], keys):
            steps, values = [r["step"] for r in recs], [r[k] for r in recs]
            ax.plot(steps, values, alpha=0.35 if len(recs) > 5 else 1.0, label=f"train {k}")
            if len(recs) > 5:
                ax.plot(steps, _smooth(values), label="smoothed (EMA 0.9)")
            val = [r for r in _metrics(out / folder) if "val_loss" in r]
            if k == "loss" and val:
                ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
            ax.set_xlabel("step")
            ax.set_title(f"{stage}: {k}")
            ax.legend()
        fig.tight_layout()
        name = f"loss_{stage}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(name)
    return written


def plot_table(out: Path, scores: dict[str, dict], suites: list[str], analogs: bool = False) -> str | None:
    """eval.png: one group of bars per suite (numeric headline scores only), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .eval.harness import HEADLINE

    numeric = [s for s in suites if any(isinstance(scores[m].get(s, {}).get(HEADLINE.get(s, ("score",))[0]),
                                                   (int, float)) for m in scores)]
    if not numeric:
        return None
    fig, ax = plt.subplots(figsize=(2.5 * len(numeric) + 1, 3.5))
    width = 0.8 / len(scores)
    for i, (model, res) in enumerate(scores.items()):
        vals = [res.get(s, {}).get(HEADLINE.get(s, ("score",))[0]) or 0 for s in numeric]
        errs = [res.get(s, {}).get("stderr") or 0 for s in numeric]  # ± one standard error, as the table
        ax.bar([j + i * width for j in range(len(numeric))], vals, width, yerr=errs, capsize=3, label=model)
    ax.set_xticks([j + width * (len(scores) - 1) / 2 for j in range(len(numeric))],
                  [f"{s} (world analog)" if analogs else s for s in numeric])
    ax.set_ylabel("score (± 1 standard error)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "eval.png", dpi=100)
    plt.close(fig)
    return "eval.png"


def _n_params(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def _num(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) else "n/a" if x is None else str(x)


def _size(path: Path) -> str:
    return f"{_n_params(path):,} parameters, {path.stat().st_size / 2**20:.2f} MB"


def sample_replies(out: Path, models: list[str], n: int = 3) -> str:
    """The first `n` held-out word problems and instruction prompts, and each stage's reply to them, read
    from the evaluation's own records (nothing is generated again)."""
    parts = []
    for suite, ask, said in (("gsm8k", "question", "output"), ("ifeval", "prompt", "response")):
        recs = {m: read_jsonl(out / "eval" / f"{m}.{suite}.jsonl") for m in models}
        if not all(recs.values()):
            continue
        by_id = {m: {str(r.get("id")): r for r in rows} for m, rows in recs.items()}
        for rec in recs[models[0]][:n]:
            rows = [f"**{suite}** item {rec.get('id')}: {_cell(rec.get(ask, ''), 300)}", "",
                    "| stage | reply |", "|---|---|"]
            rows += [f"| {m} | {_cell(by_id[m].get(str(rec.get('id')), {}).get(said, ''), 240)} |"
                     for m in models]
            parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def _cell(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "(empty)"


def environment() -> dict:
    """Where and how the run was made: commit, command line, machine, versions, date."""
    import datetime
    import platform
    import subprocess
    import sys

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(src), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    from .cli import _version

    return {"command": " ".join(["llmrecipe", *sys.argv[1:]]) if sys.argv and "llmrecipe" in sys.argv[0]
            else " ".join(sys.argv), "commit": commit, "llmrecipe": _version(),
            "cpu": f"{cpu} ({os.cpu_count()} cores)",
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def write_report(out: Path, r: dict) -> None:
    analogs = bool(r.get("analogs"))
    plots = plot_curves(out) + [p for p in [plot_table(out, r["table"]["scores"], r["table"]["suites"],
                                                       analogs)] if p]
    rows = "\n".join(f"| {k} | {v:.1f} |" for k, v in r["timings_s"].items())
    pt, sft, dpo, src = r["pretrain"], r["sft"], r["dpo"], r["inputs"]
    rl = r.get("rl") or {}
    # the RL stage runs only when the preset gives it steps
    rl_row = (f"\n| RL, GRPO (LoRA) | {rl.get('step')} | {rl.get('tokens', 0):,} | {_num(rl.get('loss'))} "
              f"(batch reward {_num(rl.get('reward'))}) | "
              f"adapter: {_size(out / 'rl' / 'adapter_model.safetensors')} |" if rl else "")
    rl_src = f"`{src.get('rl')}`" if rl else "not run (the preset gives it no steps)"
    op = r.get("onpolicy")
    # what the SFT model gets wrong, per check, in its own samples: where DPO has the most to fix
    op_line = ("\n- on-policy rejections (between SFT and DPO): "
               + f"{op['replaced']:,} of {op['checkable']:,} checkable pairs now reject a failing SFT "
               "sample; the SFT samples' failure rate per check: "
               + ", ".join(f"{k.split(':')[-1]} {v:.0%}" for k, v in op["sample_failure_rate"].items())
               if op else "")
    d = r["data"]
    data_line = (f"- pre-training: `{src['pretrain']}`: {d['documents']:,} documents → {d['train_tokens']:,} "
                 f"training and\n  {d['val_tokens']:,} validation tokens (tokenizer `{d['tokenizer']}`, "
                 f"vocabulary {d['vocab_size']:,}).")
    train_rows = (
        f"| pre-training | {pt.get('step')} | {pt.get('tokens', 0):,} | {_num(pt.get('loss'))} "
        f"(validation {_num(pt.get('val_loss'))}) | {_size(out / 'base' / 'model.safetensors')} |\n"
        f"| SFT (LoRA) | {sft.get('step')} | {sft.get('tokens', 0):,} | {_num(sft.get('loss'))} | "
        f"adapter: {_size(out / 'sft' / 'adapter_model.safetensors')} |\n"
        f"| DPO (LoRA) | {dpo.get('step')} | {dpo.get('tokens', 0):,} | {_num(dpo.get('loss'))} "
        f"(reward accuracy {_num(dpo.get('rewards/accuracy'))}, margin {_num(dpo.get('rewards/margin'))}) | "
        f"adapter: {_size(out / 'dpo' / 'adapter_model.safetensors')} |{rl_row}")
    what = ("**These columns are the generated world's analogs of the suites** — its held-out items, in "
            "each real benchmark's file layout, scored by that benchmark's own code (`world/eval/`) — not "
            "the real MMLU-Pro, GSM8K or IFEval." if analogs else
            f"The suites' own data (`{src['eval']}`).")
    env = r.get("environment") or {}
    env_rows = "\n".join(f"| {k} | {'`' + str(v) + '`' if k in ('command', 'commit') else v} |"
                         for k, v in env.items() if v is not None)
    models = list(r["table"]["scores"])
    samples = sample_replies(out, models)
    text = f"""# llmrecipe run — preset `{r['preset']}`

## Base / SFT / DPO{' / RL' if rl else ''}
{what} Scores ± standard error over the items. Each stage against the one before it, paired over the same
items:
{r['table']['markdown']}
{comparisons_markdown(r['table'].get('comparisons', {}))}
## Sample replies
Greedy, as evaluated (the first held-out items of each generation suite):

{samples or '(no generation suite was evaluated)'}
## Environment
| | |
|---|---|
{env_rows}

## Stages
| stage | seconds |
|---|---:|
{rows}
| total | {sum(r['timings_s'].values()):.1f} |

## Data
{data_line}
- SFT: `{src['sft']}`; DPO: `{src['dpo']}`; RL: {rl_src}; evaluation: `{src['eval']}`.{op_line}

## Training
| stage | steps | tokens seen | final loss | size |
|---|---:|---:|---:|---|
{train_rows}

## Plots
""" + "\n".join(f"![{p}]({p})" for p in plots) + "\n"
    atomic_write_text(out / "report.md", text)
