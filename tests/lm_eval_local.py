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


LONG_QUESTION = "Count the words of this question. " + "word " * 1400 + "How many are there?"


def with_long_items(eval_dir: Path, folder: Path) -> Path:
    """A copy of the eval layout whose GSM8K and MMLU-Pro test splits start with one item longer than a
    1,024-token context with its shots (then the real items): lm-eval and our suites must cut it the same
    way (from the left; whole shots dropped instead would still pass on the real items, all of which fit)."""
    import json
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = folder / "eval_long"
    if out.is_dir():
        return out
    shutil.copytree(eval_dir, out, symlinks=False, ignore=shutil.ignore_patterns("mt_bench"))
    gsm = out / "gsm8k" / "test.jsonl"
    rows = gsm.read_text().splitlines()
    gsm.write_text("\n".join([json.dumps({"question": LONG_QUESTION, "answer": "#### 1402"}), *rows]) + "\n")
    mmlu = out / "mmlu_pro" / "test-00000-of-00001.parquet"
    table = pq.read_table(mmlu)
    first = table.slice(0, 1).to_pylist()[0]
    long = {**first, "question": LONG_QUESTION, "question_id": 10**7}
    pq.write_table(pa.concat_tables([pa.Table.from_pylist([long], schema=table.schema), table]), mmlu)
    return out
