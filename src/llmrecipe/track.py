"""Live experiment tracking: every record the loop writes to metrics.jsonl also goes to TensorBoard and/or
Weights & Biases, under the same names and step, with the resolved config as the run's config.

Both are optional extras (`pip install 'llmrecipe[track]'`) and imported only when asked for. One tracker
run per stage: TensorBoard writes into the stage's folder (`tensorboard --logdir runs/demo` shows every
stage of a `run`), W&B groups a `run`'s stages by its folder name. A resumed stage continues the same
tracker run: TensorBoard's `purge_step` drops what the killed run logged after the checkpoint (the same
records metrics.jsonl drops), W&B resumes the run id kept in the stage folder. W&B cannot rewind a run's
history (its "rewind" is a private preview), so a resumed stage does not send W&B the steps it already has:
the steps re-run after the checkpoint are bit-identical in every trained quantity (exact resume), and only
their timings would differ. `wandb_state.json` keeps the run id and the last step sent.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from .files import atomic_write_json, read_json

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
        self.sent = -1  # W&B: steps up to this one were sent by an earlier (killed) process of this stage
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
                self.state_file = run_dir / "wandb_state.json"
                # a resumed stage continues its W&B run; a fresh one (no --resume) starts a new run
                state = (read_json(self.state_file)
                         if resume_step is not None and self.state_file.is_file() else {})
                if not isinstance(state.get("id", ""), str) or not isinstance(state.get("step", -1), int):
                    raise ValueError(f"{self.state_file}: 'id' must be a string and 'step' an integer "
                                     "(damaged): remove the file to start a new W&B run")
                run_id = state.get("id") or secrets.token_hex(4)  # W&B ids: lowercase letters and digits
                self.sent = int(state.get("step", -1))
                self.state = {"id": run_id, "step": self.sent}
                atomic_write_json(self.state_file, self.state)
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
        if self.run is not None and step > self.sent:
            self.run.log(scalars, step=step)
            if step > self.state["step"]:
                self.state["step"] = step
                atomic_write_json(self.state_file, self.state)

    def text(self, tag: str, text: str, step: int) -> None:
        for w in self.writers:
            w.add_text(tag, text, step)
        if self.run is not None and step > self.sent:
            self.run.log({tag: text}, step=step)

    def close(self) -> None:
        for w in self.writers:
            w.close()
        if self.run is not None:
            self.run.finish()
