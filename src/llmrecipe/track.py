"""Live experiment tracking: every record the loop writes to metrics.jsonl also goes to TensorBoard and/or
Weights & Biases, under the same names and step, with the resolved config as the run's config.

Both are optional extras (`pip install 'llmrecipe[track]'`) and imported only when asked for. One tracker
run per stage: TensorBoard writes into the stage's folder (`tensorboard --logdir runs/demo` shows every
stage of a `run`), W&B groups a `run`'s stages by its folder name. A resumed stage continues the same
tracker run: TensorBoard's `purge_step` drops what the killed run logged after the checkpoint (the same
records metrics.jsonl drops), W&B resumes the run id kept in the stage folder.
"""
from __future__ import annotations

import os
from pathlib import Path

KINDS = ("tensorboard", "wandb")


def parse_kinds(spec: str) -> list[str]:
    kinds = [k.strip() for k in (spec or "").split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"--log {spec!r}: unknown tracker {', '.join(bad)} (choose from {', '.join(KINDS)})")
    return kinds


class Trackers:
    def __init__(self, spec: str, run_dir: Path, name: str, config: dict, resume_step: int | None):
        self.writers: list = []
        self.run = None
        for kind in parse_kinds(spec):
            if kind == "tensorboard":
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    raise ValueError("--log tensorboard needs the tensorboard package: "
                                     "pip install 'llmrecipe[track]'") from None
                # purge_step: events at or after it, left by a killed run, are discarded on reading
                purge = resume_step + 1 if resume_step is not None else None
                self.writers.append(SummaryWriter(str(run_dir / "tb"), purge_step=purge))
            else:
                try:
                    import wandb
                except ImportError:
                    raise ValueError("--log wandb needs the wandb package: "
                                     "pip install 'llmrecipe[track]'") from None
                id_file = run_dir / "wandb_id.txt"
                run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
                id_file.write_text(run_id + "\n")
                self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "llmrecipe"), id=run_id,
                                      resume="allow", name=f"{run_dir.parent.name}/{name}",
                                      group=run_dir.parent.name, job_type=name, dir=str(run_dir),
                                      config=config)

    def log(self, record: dict) -> None:
        step = record.get("step")
        scalars = {k: float(v) for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for w in self.writers:
            for k, v in scalars.items():
                w.add_scalar(k, v, step)
            w.flush()
        if self.run is not None:
            self.run.log(scalars, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        for w in self.writers:
            w.add_text(tag, text, step)
        if self.run is not None:
            self.run.log({tag: text}, step=step)

    def close(self) -> None:
        for w in self.writers:
            w.close()
        if self.run is not None:
            self.run.finish()
