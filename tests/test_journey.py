"""Issue 35: what a user does right after the demo works, or says exactly why.

One small `llmrecipe run`, started as a user starts it (a subprocess, its output redirected to a file), then
the next steps: chat with a stage, evaluate the stages again, serve them, move and copy the run folder, and
run the chain on one's own files in other formats than the world's.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from llmrecipe.cli import main

SMALL = ["world.pretrain_docs=400", "world.sft_conversations=120", "world.preference_pairs=48",
         "world.eval_items=12", "max_steps=30", "eval_interval=0", "sft.train.max_steps=12",
         "dpo.train.max_steps=6", "rl.train.max_steps=4", "rl.train.batch_size=2", "rl.group_size=2",
         "eval.max_new_tokens=24", "eval.suites=mmlu_pro_category,gsm8k,ifeval"]


def _run(out: Path, *sets: str, log: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", "llmrecipe", "run", "--preset", "tiny", "--out", str(out), "--set", *SMALL,
           *sets]
    with open(log or out.parent / f"{out.name}.log", "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    text = (log or out.parent / f"{out.name}.log").read_text()
    assert done.returncode == 0, text[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict, Path]:
    root = tmp_path_factory.mktemp("journey")
    log = root / "demo.log"
    return root / "demo", _run(root / "demo", log=log), log


def test_the_demo_log_reads_well_in_a_file(demo):
    _, _, log = demo
    lines = log.read_text().split("\n")
    assert "\r" not in log.read_text()  # no redrawn progress bars
    assert max(len(line) for line in lines) <= 200, max(lines, key=len)[:300]


def _chat(args: list[str], question: str, capsys) -> str:
    capsys.readouterr()
    sys_stdin = sys.stdin
    sys.stdin = io.StringIO(question + "\n")
    try:
        main(["chat", "--temperature", "0", "--device", "cpu", *args])
    finally:
        sys.stdin = sys_stdin
    out = capsys.readouterr().out
    return out.split("assistant> ", 1)[1].split("\nyou>", 1)[0]


def test_default_chat_answers_as_with_a_short_budget(demo, capsys):
    """The default budget never cuts the question: greedy answers agree with a 16-token budget's (which,
    where the answer is longer, are its beginning)."""
    out, _, _ = demo
    questions = [json.loads(x)["question"] for x in (out / "world" / "eval" / "gsm8k" / "test.jsonl")
                 .read_text().splitlines()[:3]]
    for q in questions:
        default = _chat(["--model", str(out / "rl")], q, capsys)
        short = _chat(["--model", str(out / "rl"), "--max-new-tokens", "16"], q, capsys)
        assert default.startswith(short), (q, default, short)


def _scores(table: dict) -> dict:
    return {m: {s: {k: v for k, v in r.items() if k != "seconds"} for s, r in suites.items()}
            for m, suites in table.items()}


def test_standalone_eval_reproduces_the_runs_table(demo, tmp_path):
    out, results, _ = demo
    models = [f"{m}={out / m}" for m in ("base", "sft", "dpo", "rl")]
    before = sorted(str(p) for p in out.rglob("*"))
    main(["eval", "--compare", *models, "--data-dir", str(out / "world" / "eval"), "--out",
          str(tmp_path / "table.md"), "--quiet"])
    table = json.loads((tmp_path / "table.json").read_text())
    assert _scores(table["scores"]) == _scores(results["table"]["scores"])
    assert sorted(str(p) for p in out.rglob("*")) == before  # nothing written into the models' folders
    assert results["eval_settings"]["scoring"] == "text" and results["eval_settings"]["batch_size"] == 64


def test_a_moved_and_a_copied_run_folder_load_their_own_base(demo, tmp_path):
    from llmrecipe.checkpoint import adapter_chain, load_model

    out, _, _ = demo
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    root, chain = adapter_chain(copy / "rl")
    assert root == (copy / "base").resolve() and chain[0] == (copy / "sft").resolve()  # not the original's
    moved = tmp_path / "moved"
    copy.rename(moved)
    root, _ = adapter_chain(moved / "rl")
    assert root == (moved / "base").resolve()
    model, _ = load_model(moved / "rl")
    ref, _ = load_model(out / "rl")
    assert all(a.equal(b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_serve_names_the_model_it_loaded_and_defaults_to_it(demo):
    out, _, _ = demo
    cmd = [sys.executable, "-m", "llmrecipe", "serve", "--model", str(out / "rl"), "--port", "0",
           "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving rl on http://" in line, line + proc.stderr.read()
        url = line.split(" on ", 1)[1].strip()
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
        req = urllib.request.Request(url + "/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert json.loads(r.read())["model"] == "rl"  # no model field: the one loaded
        with pytest.raises(SystemExit, match=r"--model nope: not served at .* \(it serves: rl\)"):
            main(["chat", "--url", url, "--model", "nope"])  # checked before the first turn is typed
    finally:
        proc.kill()
        err = proc.communicate()[1]
    assert "POST /v1/chat/completions model=rl 200 tokens=" in err, err[-1000:]


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_run_trains_on_the_users_own_files_in_other_formats(demo, tmp_path):
    """A corpus as .txt files, chat data as ShareGPT, preference pairs as TRL's conversational format and
    RL problems in GSM8K's: every stage reads what it was given (config.json, data_report.json say so)."""
    out, _, _ = demo
    world = out / "world"
    mine = tmp_path / "mine"
    (mine / "corpus").mkdir(parents=True)
    for i, row in enumerate(json.loads(x) for x in (world / "pretrain.jsonl").read_text().splitlines()[:300]):
        (mine / "corpus" / f"doc{i:03d}.txt").write_text(row["text"])
    chats = [json.loads(x)["messages"] for x in (world / "sft.jsonl").read_text().splitlines()[:80]]
    sharegpt = _write_jsonl(mine / "chat.jsonl", [{"conversations": [
        {"from": {"user": "human", "assistant": "gpt", "system": "system"}[m["role"]], "value": m["content"]}
        for m in c]} for c in chats])
    pairs = [json.loads(x) for x in (world / "preferences.jsonl").read_text().splitlines()[:40]]
    trl = _write_jsonl(mine / "prefs.jsonl", [{"prompt": p["chosen"][:-1], "chosen": p["chosen"][-1:],
                                              "rejected": p["rejected"][-1:]} for p in pairs])
    rl = _write_jsonl(mine / "rl.jsonl", [json.loads(x) for x in
                                          (world / "rl_gsm8k.jsonl").read_text().splitlines()[:20]])
    run_dir = tmp_path / "own"
    r = _run(run_dir, f"prepare.source={mine / 'corpus'}", f"sft.data={sharegpt}", f"dpo.data={trl}",
             f"rl.data={rl}", f"eval.data_dir={world / 'eval'}")
    assert json.loads((run_dir / "data" / "meta.json").read_text())["source"] == str(mine / "corpus")
    assert json.loads((run_dir / "sft" / "config.json").read_text())["data"] == sharegpt
    report = json.loads((run_dir / "sft" / "data_report.json").read_text())
    assert report["source"] == sharegpt and report["formats"] == {"sharegpt": 80}
    assert json.loads((run_dir / "dpo" / "config.json").read_text())["data"] == trl
    assert json.loads((run_dir / "dpo" / "data_report.json").read_text())["kept"] == 40
    assert json.loads((run_dir / "rl" / "config.json").read_text())["data"] == rl
    assert r["inputs"] == {"pretrain": str(mine / "corpus"), "sft": sharegpt, "dpo": trl, "rl": rl,
                           "eval": str(world / "eval")}


def test_the_report_says_what_its_columns_are_and_where_it_ran(demo):
    import torch

    out, results, _ = demo
    report = (out / "report.md").read_text()
    assert "world's analogs of the suites" in report and results["analogs"] is True
    samples = report.split("## Sample replies", 1)[1].split("## Environment", 1)[0]
    first = json.loads((out / "world" / "eval" / "gsm8k" / "test.jsonl").read_text().splitlines()[0])
    assert first["question"] in samples and samples.count("| rl |") >= 3  # each stage's replies, shown
    env = results["environment"]
    assert env["torch"] == torch.__version__ and env["command"].startswith("llmrecipe run --preset tiny")
    assert f"| torch | {torch.__version__} |" in report


def _readme_lm_eval_lines() -> list[list[str]]:
    """The documented `lm_eval` commands (docs/commands.md), continuation lines joined, comments dropped."""
    import shlex

    from conftest import ROOT

    text = (ROOT / "docs" / "commands.md").read_text()
    lines, out = text.split("\n"), []
    for i, line in enumerate(lines):
        if line.startswith("lm_eval "):
            cmd = line
            while cmd.split("#")[0].rstrip().endswith("\\"):
                cmd = cmd.split("#")[0].rstrip()[:-1] + " " + lines[i + 1].strip()
                i += 1
            out.append(shlex.split(cmd.split("#")[0]))
    assert len(out) == 2, out
    return out


@pytest.mark.parametrize("context", [256, 1024])
def test_the_readme_lm_eval_lines_run_on_an_export(demo, data_dir, tmp_path, context, monkeypatch):
    """As written (the hub's task names swapped for the same tasks on local files, --limit 2), on the demo's
    256-token export with the budget the docs give for it, and on a GPT-2-shaped 1,024-token export."""
    import os

    import torch

    from lm_eval_local import local_task

    out, _, _ = demo
    if context == 256:
        hf = out / "hf" / "dpo"
    else:
        from llmrecipe.checkpoint import save_model
        from llmrecipe.export import export_hf
        from llmrecipe.model import GPT, GPTConfig
        from llmrecipe.tokenizer import GPT2Tokenizer

        monkeypatch.setenv("LLMRECIPE_GPT2_RANKS", str(data_dir / "tokenizer" / "r50k_base.tiktoken"))
        torch.manual_seed(0)
        model, tok = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32)).eval(), GPT2Tokenizer()
        save_model(tmp_path / "ours", model, tok)
        hf = export_hf(tmp_path / "hf", model, tok)
    tasks = tmp_path / "tasks"
    for name in ("gsm8k_cot", "leaderboard_mmlu_pro", "ifeval"):
        local_task(name, data_dir / "eval", tasks)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    for cmd in _readme_lm_eval_lines():
        cmd = [a.replace("runs/dpo-hf", str(hf)) for a in cmd]
        i = cmd.index("--tasks")
        cmd[i + 1] = ",".join(f"local_{t}" for t in cmd[i + 1].split(","))
        if context == 256:  # the docs' note for the tiny demo's context
            if "--gen_kwargs" in cmd:
                cmd[cmd.index("--gen_kwargs") + 1] = "max_gen_toks=96"
            else:
                cmd += ["--gen_kwargs", "max_gen_toks=96"]
        done = subprocess.run([sys.executable, "-m", "lm_eval", *cmd[1:], "--include_path", str(tasks),
                               "--limit", "2", "--device", "cpu", "--batch_size", "1"], env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (cmd, done.stderr[-3000:])
        assert "local_" in done.stdout, done.stdout[-2000:]  # its results table
