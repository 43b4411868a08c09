"""The run's report: report.md, and PNG plots of every stage's curves and of the base/SFT/DPO table."""
from __future__ import annotations

import math
from pathlib import Path

from .eval.harness import comparisons_markdown
from .files import atomic_write_text, read_jsonl


def _metrics(folder: Path) -> list[dict]:
    f = folder / "metrics.jsonl"
    return read_jsonl(f)


def plot_curves(out: Path) -> list[str]:
    """loss_<stage>.png for each training stage; DPO also reward accuracy and margin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    extra = {"dpo": ["rewards/accuracy", "rewards/margin"], "rl": ["reward", "answer_tokens"]}
    for stage, folder in (("pretrain", "base"), ("sft", "sft"), ("dpo", "dpo"), ("rl", "rl")):
        recs = [r for r in _metrics(out / folder) if "loss" in r]
        if not recs:
            continue
        keys = ["loss"] + extra.get(stage, [])
        fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
        for ax, k in zip(axes[0], keys):
            ax.plot([r["step"] for r in recs], [r[k] for r in recs], label=f"train {k}")
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


def plot_table(out: Path, scores: dict[str, dict], suites: list[str]) -> str | None:
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
        ax.bar([j + i * width for j in range(len(numeric))], vals, width, label=model)
    ax.set_xticks([j + width * (len(scores) - 1) / 2 for j in range(len(numeric))], numeric)
    ax.set_ylabel("score")
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


def write_report(out: Path, r: dict) -> None:
    plots = plot_curves(out) + [p for p in [plot_table(out, r["table"]["scores"], r["table"]["suites"])] if p]
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
    text = f"""# llmrecipe run — preset `{r['preset']}`

## Base / SFT / DPO{' / RL' if rl else ''}
Scores ± standard error over the items. Each stage against the one before it, paired over the same items:
{r['table']['markdown']}
{comparisons_markdown(r['table'].get('comparisons', {}))}
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
