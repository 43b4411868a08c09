"""lm-evaluation-harness's own tasks pointed at the local copies in ../shared/data/eval.

Each YAML `include`s the task file shipped inside the installed lm-eval (its prompt functions, shots,
filters and metrics stay lm-eval's) and only swaps the hub data set for the local files of the same schema."""
from __future__ import annotations

from pathlib import Path

LOCAL = {
    "leaderboard_mmlu_pro": ("tasks/leaderboard/mmlu_pro/mmlu_pro.yaml", "parquet", {
        "test": "mmlu_pro/test-00000-of-00001.parquet",
        "validation": "mmlu_pro/validation-00000-of-00001.parquet"}),
    "gsm8k_cot": ("tasks/gsm8k/gsm8k-cot.yaml", "json", {"test": "gsm8k/test.jsonl",
                                                         "train": "gsm8k/train.jsonl"}),
    "ifeval": ("tasks/ifeval/ifeval.yaml", "json", {"train": "ifeval/input_data.jsonl"}),
}


def local_task(name: str, eval_dir: Path, folder: Path):
    """The lm-eval Task `name` reading `eval_dir` (its YAML written to `folder`)."""
    import lm_eval

    upstream, builder, files = LOCAL[name]
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"include: {Path(lm_eval.__file__).parent / upstream}", f"task: local_{name}",
             f"dataset_path: {builder}", "dataset_name: null", "dataset_kwargs:", "  data_files:"]
    lines += [f"    {split}: {eval_dir / rel}" for split, rel in files.items()]
    (folder / f"local_{name}.yaml").write_text("\n".join(lines) + "\n")
    return manager(folder).load_task_or_group(f"local_{name}")[f"local_{name}"]


def manager(folder: Path):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(folder))
