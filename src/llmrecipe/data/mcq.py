"""The multiple-choice prompt format of MMLU-Pro's evaluation (shared by the suite and the tiny world's
data)."""
from __future__ import annotations

LETTERS = "ABCDEFGHIJ"


def format_question(item: dict, with_answer: bool) -> str:
    """"Question: ...\\nOptions:\\nA. ...\\nAnswer:" (+ " X\\n\\n" for a few-shot exemplar)."""
    opts = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(item["options"]))
    answer = f" {item['answer']}\n\n" if with_answer else ""
    return f"Question: {item['question']}\nOptions:\n{opts}\nAnswer:" + answer


def header(category: str) -> str:
    return f"The following are multiple choice questions (with answers) about {category}.\n\n"
