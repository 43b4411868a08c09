"""Issue 16's probe as a test: every command fed bad input ends in ONE line that names the file, row, field or
flag at fault — never a traceback, never a hang, never exit 0 with a wrong result.

Table-driven and in-process (`main()` as the console script calls it), so ~90 cases cost seconds. A case
passes when `main` raises SystemExit with a one-line "error: ..." naming the expected thing (our errors), or
exits 2 with argparse's "error: argument --flag: ..." (range-checked flags). Any other exception is the
traceback a user would have seen; a case running past its alarm is a hang.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import signal

import pytest

from llmrecipe.cli import main

MODEL, ADAPTER, EVAL = "{model}", "{adapter}", "{eval}"  # filled in per test from the fixtures
JUDGE = ["--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m"]  # never called: the input fails first
FILES = {
    "notext.jsonl": '{"body": "x"}\n',
    "badjson.jsonl": '{"text": "a"}\n{"text": \n{"text": "c"}\n',
    "empty.jsonl": "",
    "latin1.jsonl": b'{"text": "caf\xe9"}\n',
    "sft_bad.jsonl": json.dumps({"messages": "hi"}) + "\n",
    "sft_badrole.jsonl": json.dumps({"messages": [{"role": "wizard", "content": "x"}]}) + "\n",
    "dpo_bad.jsonl": json.dumps({"prompt": "p", "chosen": 3, "rejected": "r"}) + "\n",
    "gsm_bad.jsonl": json.dumps({"question": "q", "answer": "no #### marker"}).replace("####", "") + "\n",
    "resp_bad.jsonl": json.dumps({"prompt": "nope", "response": "x"}) + "\n",
    "resp_nofield.jsonl": json.dumps({"text": "x"}) + "\n",
    "key.txt": "",
    "notjson.json": "{",
    # issue 36, finding 10: tracebacks and messages that named no file
    "preset_bad.yaml": "model: [1,\n",
    "preset_list.yaml": "- 1\n- 2\n",
    "preset_partial.yaml": "model:\n  n_layer: 2\npretrain:\n  max_steps: 20\n",
    "op_str.jsonl": json.dumps({"chosen": "an answer", "rejected": "x", "instruction_id_list": [
        "punctuation:no_comma"], "kwargs": [{}]}) + "\n",
    "op_nochosen.jsonl": json.dumps({"rejected": [], "instruction_id_list": ["punctuation:no_comma"],
                                     "kwargs": [{}]}) + "\n",
    "op_badkw.jsonl": json.dumps({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant",
                                                                                "content": "a"}],
                                  "rejected": [], "instruction_id_list": ["length_constraints:number_words"],
                                  "kwargs": [{"num_words": "ten", "relation": "at least"}]}) + "\n",
    "records/eval.gsm8k.jsonl": "[]\n",
    "cache5.jsonl": "5\n",
    "cache_noout.jsonl": json.dumps({"key": "k"}) + "\n",
    # issue 36, finding 7 and 11
    "gsm_blank.jsonl": json.dumps({"question": "q", "answer": "#### "}) + "\n",
    "gsm_many.jsonl": json.dumps({"question": "q", "answer": "#### many"}) + "\n",
    "latin1_61.jsonl": b'{"text": "fine"}\n' * 60 + b'{"text": "caf\xe9"}\n',
    "latin1.txt": b"line one\nline two caf\xe9\n",
    "table.csv": "a,b\n1,2\n",
}
PREP = ["prepare", "text", "--out", "s", "--tokenizer", "gpt2", "--input"]
ONE = ["--set", "max_steps=1"]

CASES = [  # (command line, what its error must name)
    # prepare
    ([*PREP, "missing.jsonl"], "missing.jsonl: no such file"),
    ([*PREP, "notext.jsonl"], "notext.jsonl, row 1: no 'text' column"),
    ([*PREP, "badjson.jsonl"], "badjson.jsonl, line 2: not valid JSON"),
    ([*PREP, "empty.jsonl"], "empty.jsonl: file is empty"),
    ([*PREP, "latin1.jsonl"], "latin1.jsonl"),
    ([*PREP, "notext.jsonl", "--shard-tokens", "0"], "shard_tokens"),
    ([*PREP, "notext.jsonl", "--val-every", "0"], "val_every"),
    ([*PREP, "notext.jsonl", "--max-tokens", "-5"], "max_tokens"),
    ([*PREP, "notext.jsonl", "--preset", "nosuch"], "unknown preset 'nosuch'"),
    (["prepare", "text", "--out", "s", "--input", "notext.jsonl", "--tokenizer", "bpe:nofile.json"],
     "nofile.json: no such tokenizer file"),
    (["prepare", "text", "--out", "s", "--input", "notext.jsonl", "--tokenizer", "bpe:notjson.json"],
     "notjson.json: not a `tokenizers` JSON file"),
    (["prepare", "text", "--out", "s", "--input", "notext.jsonl", "--tokenizer", "sentencepiece"],
     "unknown tokenizer spec 'sentencepiece'"),
    (["prepare", "text", "--out", "s", "--input", "notext.jsonl", "--tokenizer", "bpe", "--vocab-size", "0"],
     "bpe_vocab_size"),
    # pretrain
    (["pretrain", "--data", "missing_dir", "--out", "p"], "missing_dir: no such folder"),
    (["pretrain", "--data", "emptydir", "--out", "p"], "emptydir/tokenizer_spec.json"),
    (["pretrain", "--data", "emptydir", "--out", "p", "--set", "lr=abc"], "config key 'lr'"),
    (["pretrain", "--data", "emptydir", "--out", "p", "--set", "n_layers=2"],
     "unknown config key 'n_layers'"),
    (["pretrain", "--data", "emptydir", "--out", "p", "--set", "max_steps=-1"], "max_steps"),
    (["pretrain", "--data", "emptydir", "--out", "p", "--set", "block_size=0"], "block_size"),
    (["pretrain", "--data", "emptydir", "--out", "p", "--set", "batch_size=0"], "batch_size"),
    (["pretrain", "--data", "emptydir", "--out", "p", "--set", "device=cuda"], "device=cuda"),
    (["pretrain", "--data", "emptydir", "--out", "p", "--log", "tensorbored"], "tensorbored"),
    # generate
    (["generate", "--model", "missing"], "missing: not a model folder"),
    (["generate", "--model", "emptydir"], "emptydir: not a model folder"),
    (["generate", "--model", MODEL, "--max-new-tokens", "0"], "argument --max-new-tokens"),
    (["generate", "--model", MODEL, "--temperature", "-1"], "argument --temperature"),
    (["generate", "--model", MODEL, "--num-samples", "0"], "argument --num-samples"),
    (["generate", "--model", MODEL, "--top-p", "1.5"], "argument --top-p"),
    (["generate", "--model", MODEL, "--top-k", "-3"], "argument --top-k"),
    (["generate", "--model", MODEL, "--seed", str(2**70)], "argument --seed"),
    (["generate", "--model", MODEL, "--device", "cuda"], "device=cuda"),
    # sft
    (["sft", "--base", "missing", "--data", "sft_bad.jsonl", "--out", "o"], "missing: not a model folder"),
    (["sft", "--base", MODEL, "--data", "missing.jsonl", "--out", "o"], "missing.jsonl: no such file"),
    (["sft", "--base", MODEL, "--data", "sft_bad.jsonl", "--out", "o", "--strict"],
     "sft_bad.jsonl, row 1, field 'messages'"),
    (["sft", "--base", MODEL, "--data", "sft_bad.jsonl", "--out", "o"],
     "sft_bad.jsonl: no usable conversations"),
    (["sft", "--base", MODEL, "--data", "sft_badrole.jsonl", "--out", "o", "--strict"],
     "unknown role 'wizard'"),
    (["sft", "--base", MODEL, "--data", "sft_bad.jsonl", "--out", "o", "--epochs", "-1"],
     "config key 'epochs'"),
    (["sft", "--base", MODEL, "--data", "sft_bad.jsonl", "--out", "o", "--lr", "0"], "config key 'train.lr'"),
    (["sft", "--base", MODEL, "--data", "sft_bad.jsonl", "--out", "o", "--set", "r=0"],
     "config key 'lora.r'"),
    # dpo
    (["dpo", "--sft", "missing", "--data", "dpo_bad.jsonl", "--out", "d"], "missing: not a model folder"),
    (["dpo", "--sft", ADAPTER, "--data", "dpo_bad.jsonl", "--out", "d", "--strict"],
     "dpo_bad.jsonl, row 1, field 'chosen'"),
    (["dpo", "--sft", ADAPTER, "--data", "dpo_bad.jsonl", "--out", "d"], "no usable preference pairs"),
    (["dpo", "--sft", ADAPTER, "--data", "dpo_bad.jsonl", "--out", "d", "--beta", "0"], "config key 'beta'"),
    (["dpo", "--sft", ADAPTER, "--data", "notjson.json", "--out", "d"], "notjson.json: not valid JSON"),
    # rl
    (["rl", "--model", "missing", "--data", "gsm_bad.jsonl", "--out", "r", *ONE],
     "missing: not a model folder"),
    (["rl", "--model", ADAPTER, "--data", "gsm_bad.jsonl", "--out", "r", *ONE],
     "gsm_bad.jsonl, row 1, field 'answer'"),
    (["rl", "--model", ADAPTER, "--data", "missing.jsonl", "--out", "r", *ONE],
     "missing.jsonl: no such file"),
    (["rl", "--model", ADAPTER, "--data", "gsm_bad.jsonl", "--out", "r", "--group-size", "1", *ONE],
     "config key 'group_size'"),
    (["rl", "--model", ADAPTER, "--data-dir", "emptydir", "--out", "r", *ONE], "emptydir/gsm8k/train.jsonl"),
    (["rl", "--model", ADAPTER, "--data", "gsm_bad.jsonl", "--out", "r", "--set", "max_steps=0"],
     "rl needs train.max_steps > 0"),
    # chat (flags are checked before the model loads; stdin is never read)
    (["chat", "--model", "missing"], "missing: not a model folder"),
    (["chat", "--model", MODEL, "--adapter", "missing"], "--adapter missing: not an adapter folder"),
    (["chat", "--model", MODEL, "--temperature", "-1"], "argument --temperature"),
    (["chat", "--model", MODEL, "--max-new-tokens", "0"], "argument --max-new-tokens"),
    (["chat", "--model", MODEL, "--top-p", "0"], "argument --top-p"),
    # merge / export
    (["merge", "--model", "missing", "--out", "m"], "missing: not a model folder"),
    (["merge", "--model", MODEL, "--adapter", "missing", "--out", "m"], "--adapter missing: not an adapter"),
    (["merge", "--model", MODEL, "--out", "m"], "nothing to merge"),
    (["merge", "--model", ADAPTER, "--out", "notjson.json"],
     "--out notjson.json: exists and is not a folder"),
    (["export", "--model", "missing", "--out", "e"], "missing: not a model folder"),
    (["export", "--model", MODEL, "--adapter", "emptydir", "--out", "e"],
     "--adapter emptydir: not an adapter"),
    (["export", "--model", MODEL, "--out", "notjson.json"], "--out notjson.json: exists and is not a folder"),
    # eval
    (["eval", "--model", "missing", "--suites", "gsm8k", "--data-dir", EVAL], "missing: not a model folder"),
    (["eval", "--model", MODEL, "--suites", "gsm8kk", "--data-dir", EVAL], "unknown suite(s) gsm8kk"),
    (["eval", "--model", MODEL, "--suites", "gsm8k", "--data-dir", "emptydir"], "emptydir/gsm8k/train.jsonl"),
    (["eval", "--model", MODEL, "--suites", "gsm8k", "--data-dir", EVAL, "--limit", "0"], "argument --limit"),
    (["eval", "--model", MODEL, "--suites", "gsm8k", "--data-dir", EVAL, "--batch-size", "0"],
     "argument --batch-size"),
    (["eval", "--model", MODEL, "--suites", "gsm8k", "--data-dir", EVAL, "--max-new-tokens", "0"],
     "argument --max-new-tokens"),
    (["eval", "--compare", "base", "--suites", "gsm8k", "--data-dir", EVAL], "--compare expects NAME=PATH"),
    (["eval", "--compare", "a=missing", f"b={MODEL}", "--suites", "gsm8k", "--data-dir", EVAL],
     "missing: not a model folder"),
    (["eval", "--suites", "gsm8k", "--data-dir", EVAL], "eval needs either --model or --compare"),
    (["eval", "--model", MODEL, "--suites", "mt_bench", "--data-dir", EVAL, "--judge-concurrency", "0",
      *JUDGE],
     "argument --judge-concurrency"),
    (["eval", "--model", MODEL, "--suites", "mt_bench", "--data-dir", EVAL, "--judge-api-key-file", "key.txt",
      *JUDGE], "key.txt: the key file is empty"),
    # serve (every check before the socket is bound)
    (["serve", "--model", "missing"], "missing: not a model folder"),
    (["serve", "--model", MODEL, "--api-key-file", "missing.txt"], "missing.txt: cannot read the key"),
    (["serve", "--model", MODEL, "--api-key-file", "key.txt"], "key.txt: the key file is empty"),
    (["serve", "--model", MODEL, "--adapter", "noequals"], "--adapter expects NAME=PATH"),
    (["serve", "--model", MODEL, "--adapter", "x=missing"], "x=missing"),
    (["serve", "--model", MODEL, "--port", "70000"], "argument --port"),
    (["serve"], "serve needs --model MODEL (with any --adapter NAME=PATH) or --run RUN"),
    (["serve", "--model", MODEL, "--run", "emptydir"], "not both"),
    (["serve", "--run", "emptydir"], "--run emptydir: no base/model.json"),
    # mt-bench
    (["mt-bench", "pairwise", "--a", f"x={MODEL}", "--b", f"y={MODEL}", "--data-dir", "emptydir", *JUDGE],
     "emptydir/mt_bench"),
    (["mt-bench", "pairwise", "--a", "noequals", "--b", f"y={MODEL}", "--data-dir", EVAL, *JUDGE],
     "--a expects NAME=PATH"),
    (["mt-bench", "pairwise", "--a", "x=missing", "--b", f"y={MODEL}", "--data-dir", EVAL, *JUDGE],
     "missing: not a model folder"),
    (["mt-bench", "pairwise", "--a", f"x={MODEL}", "--b", f"y={MODEL}", "--data-dir", EVAL, "--limit", "0",
      *JUDGE], "argument --limit"),
    (["mt-bench", "pairwise", "--a", f"x={MODEL}", "--b", f"y={MODEL}", "--data-dir", EVAL], "needs a judge"),
    # ifeval-score
    (["ifeval-score", "--responses", "missing.jsonl", "--data-dir", EVAL], "missing.jsonl"),
    (["ifeval-score", "--responses", "resp_bad.jsonl", "--data-dir", EVAL],
     "resp_bad.jsonl, line 1: prompt is not in the IFEval benchmark"),
    (["ifeval-score", "--responses", "resp_nofield.jsonl", "--data-dir", EVAL],
     "resp_nofield.jsonl, line 1: missing or non-string field 'prompt'"),
    (["ifeval-score", "--responses", "empty.jsonl", "--data-dir", EVAL], "empty.jsonl: no responses"),
    (["ifeval-score", "--responses", "resp_bad.jsonl", "--data-dir", "emptydir"],
     "emptydir/ifeval/input_data"),
    # run: every stage's settings are checked before the first stage starts
    (["run", "--preset", "nosuch", "--out", "x"], "unknown preset 'nosuch'"),
    (["run", "--out", "x", "--set", "eval.suites=gsm8kk"], "unknown suite(s) gsm8kk"),
    (["run", "--out", "x", "--set", "eval.batch_size=0"], "config key 'batch_size' = 0: must be ≥ 1"),
    (["run", "--out", "x", "--set", "rl.group_size=0"], "config key 'group_size'"),
    (["run", "--out", "x", "--set", "world.eval_items=0"], "config key 'world.eval_items' = 0"),
    (["run", "--out", "x", "--set", "world.seed=abc"], "config key 'world.seed'"),
    (["run", "--out", "x", "--set", "world.digit_sums=2"], "config key 'world.digit_sums' = 2: must be 0-1"),
    (["run", "--out", "x", "--set", "world.arithmetic_percent=60"],
     "config key 'world.arithmetic_percent' = 60: must be 0-55"),
    (["run", "--out", "x", "--set", "sft.train.grad_accum=0"], "grad_accum"),
    (["run", "--out", "x", "--data-dir", "missing"], "--data-dir missing: no such folder"),
    # issue 36, finding 10: each was a traceback, or a message without the file
    ([*PREP, "notext.jsonl", "--out", "/dev/null/x"], "/dev/null/x"),
    (["onpolicy", "--sft", ADAPTER, "--data", "op_str.jsonl", "--out", "/dev/null/x"], "/dev/null/x"),
    (["eval", "--model", MODEL, "--suites", "gsm8k", "--data-dir", EVAL, "--out", "emptydir"],
     "--out emptydir is a folder"),
    (["pretrain", "--data", "emptydir", "--out", "p", "--set", "max_steps=1e400"], "config key 'max_steps'"),
    (["pretrain", "--data", "emptydir", "--out", "p", "--set", "device=banana"], "device 'banana'"),
    (["pretrain", "--data", "emptydir", "--out", "p", "--preset", "preset_bad.yaml"],
     "preset_bad.yaml: not valid YAML at line 2"),
    (["pretrain", "--data", "emptydir", "--out", "p", "--preset", "preset_list.yaml"],
     "preset_list.yaml: a preset is a YAML mapping"),
    (["generate", "--model", "badmodel"], "badmodel/model.json: not valid JSON"),
    (["generate", "--model", "unknownkey"], "unknownkey/model.json: field 'config': got an unexpected"),
    (["chat", "--model", "adapter_r0"], "adapter_r0/adapter_config.json: field 'r' must be an integer"),
    (["chat", "--url", "http://127.0.0.1:9/v1", "--model", "m"], "cannot reach the server"),
    (["onpolicy", "--sft", ADAPTER, "--data", "op_str.jsonl", "--out", "o"],
     "op_str.jsonl, row 1, field 'chosen'"),
    (["onpolicy", "--sft", ADAPTER, "--data", "op_nochosen.jsonl", "--out", "o"],
     "op_nochosen.jsonl, row 1, field 'chosen'"),
    (["onpolicy", "--sft", ADAPTER, "--data", "op_badkw.jsonl", "--out", "o"],
     "op_badkw.jsonl, row 1, field 'kwargs'"),
    (["eval", "--model", MODEL, "--suites", "gsm8k", "--data-dir", EVAL, "--limit", "1", "--out",
      "records/eval.json"], "records/eval.gsm8k.jsonl, line 1: expected a JSON object"),
    (["eval", "--model", MODEL, "--suites", "mt_bench", "--data-dir", EVAL, *JUDGE, "--judge-cache",
      "cache5.jsonl"], "cache5.jsonl, line 1: expected a JSON object"),
    (["eval", "--model", MODEL, "--suites", "mt_bench", "--data-dir", EVAL, *JUDGE, "--judge-cache",
      "cache_noout.jsonl"], "cache_noout.jsonl: record 1 lacks"),
    (["run", "--out", "x", "--set", "sft.bogus=1"],
     "--set sft.bogus: unknown config key 'bogus' in SFTConfig"),
    (["sft", "--base", MODEL, "--data", "sft_bad.jsonl", "--out", "o", "--set", "bogus=1"], "known: "),
    # issue 35: a partial preset, preset show
    (["run", "--preset", "preset_partial.yaml", "--out", "x"],
     "preset_partial.yaml: no prepare, sft, dpo, rl sections: start it with `extends: tiny`"),
    (["preset", "show"], "preset show needs a NAME"),
    (["preset", "show", "nosuch"], "unknown preset 'nosuch'"),
    (["chat", "--model", MODEL, "--adapter", "adapter_r0"], "field 'r' must be an integer"),
    # issue 36, finding 7: silently partial results
    (["eval", "--compare", f"a={MODEL}", f"a={MODEL}", "--suites", "gsm8k", "--data-dir", EVAL],
     "--compare names a twice"),
    (["eval", "--model", MODEL, "--suites", "", "--data-dir", EVAL], "no suite named"),
    (["run", "--out", "x", "--set", "eval.suites="], "no suite named"),
    (["rl", "--model", ADAPTER, "--data", "gsm_blank.jsonl", "--out", "r", *ONE], "gsm_blank.jsonl, row 1"),
    (["rl", "--model", ADAPTER, "--data", "gsm_many.jsonl", "--out", "r", *ONE],
     "the answer after '####' is 'many', not a number"),
    # issue 36, finding 11
    ([*PREP, "latin1_61.jsonl"], "latin1_61.jsonl, line 61: not UTF-8"),
    ([*PREP, "latin1.txt"], "latin1.txt, line 2: not UTF-8"),
    ([*PREP, "table.csv"], "table.csv: unsupported file type"),
]


class Hang(Exception):
    pass


def _alarm(*_):
    raise Hang


@pytest.fixture(scope="module")
def folder(tiny_base, data_dir, tmp_path_factory):
    from llmrecipe.lora import LoRAConfig
    from llmrecipe.train.loop import TrainConfig
    from llmrecipe.train.sft import SFTConfig, run_sft

    w = tmp_path_factory.mktemp("bad_inputs")
    for name, text in FILES.items():
        (w / name).parent.mkdir(parents=True, exist_ok=True)
        (w / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    (w / "emptydir").mkdir()
    for bad, meta in (("badmodel", "{"), ("unknownkey", None)):
        (w / bad).mkdir()
        shutil.copyfile(tiny_base / "model.safetensors", w / bad / "model.safetensors")
        if meta is None:
            cfg = json.loads((tiny_base / "model.json").read_text())
            meta = json.dumps({**cfg, "config": {**cfg["config"], "n_layers": 2}})
        (w / bad / "model.json").write_text(meta)
    adapter = w / "adapter"
    run_sft(SFTConfig(lora=LoRAConfig(r=2, alpha=4, dropout=0.0), base=str(tiny_base),
                      data=str(data_dir / "sft" / "ultrachat_200k_sample20.jsonl"),
                      train=TrainConfig(batch_size=2, grad_accum=1, max_steps=1, lr=1e-3, warmup_steps=0,
                                        log_interval=1, eval_interval=0, save_interval=100)), adapter)
    shutil.copytree(adapter, w / "adapter_r0")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (w / "adapter_r0" / "adapter_config.json").write_text(json.dumps({**cfg, "r": 0}))
    return w, {MODEL: str(tiny_base), ADAPTER: str(adapter), EVAL: str(data_dir / "eval")}


@pytest.mark.parametrize("args, names", CASES,
                         ids=[" ".join(c[0][:2]) + f" #{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_naming_the_thing(folder, args, names, monkeypatch):
    where, fill = folder
    monkeypatch.chdir(where)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("LLMRECIPE_DEBUG", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # chat must never get as far as reading a turn
    args = [fill.get(a, a) for a in args]
    args = [a.replace(MODEL, fill[MODEL]) for a in args]  # NAME={model}
    if args[0] in ("sft", "dpo", "rl"):  # the fixture's model records no preset
        args += ["--preset", "tiny"]
    err = io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(120)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main(args)
        pytest.fail(f"exit 0 on bad input: {args}")
    except SystemExit as e:
        if isinstance(e.code, str):  # ours: sys.exit("error: ...")
            msg = e.code
        else:  # argparse: usage, then "llmrecipe CMD: error: argument --flag: ..."
            assert e.code == 2, (args, e.code, err.getvalue()[-500:])
            msg = err.getvalue().strip().splitlines()[-1]
            msg = msg[msg.index("error:"):]
        assert msg.startswith("error:") and "\n" not in msg, (args, msg)
        assert names in msg, (args, msg)
        assert "Traceback" not in err.getvalue()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert not (where / "x").exists()  # `run` failed before creating its folder


def test_gpt2_tokenizer_offline_is_one_line_saying_what_to_do(folder, monkeypatch, capsys):
    """`prepare text` with the default gpt2 tokenizer and no tiktoken cache, offline: tiktoken's download
    fails inside `requests` (an 89-line traceback before); now one line naming the ways out."""
    import requests
    import tiktoken

    where, _ = folder
    monkeypatch.chdir(where)
    monkeypatch.delenv("LLMRECIPE_GPT2_RANKS", raising=False)
    monkeypatch.delenv("LLMRECIPE_DEBUG", raising=False)

    def offline(name):
        raise requests.exceptions.ConnectionError("Max retries exceeded (no network)")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(SystemExit) as e:
        main([*PREP[:-3], "--input", "notext.jsonl"])
    assert str(e.value).startswith("error: the gpt2 tokenizer's ranks could not be loaded (ConnectionError)")
    assert "LLMRECIPE_GPT2_RANKS" in str(e.value) and "--tokenizer bpe" in str(e.value)


def test_gpt2_ranks_file_given_to_prepare_serves_the_later_stages_offline(data_dir, tmp_path, monkeypatch):
    """`prepare --tokenizer gpt2:FILE` on an offline machine, then any stage reading the shards: the folder
    records plain `gpt2` (the ranks are the same from anywhere), so the stage needed $LLMRECIPE_GPT2_RANKS
    set again. The file the user named is recorded as a hint and used while it exists; where it does not (the
    folder moved to another machine), the one-line error of the test above, never a different tokenizer."""
    import requests
    import tiktoken

    from llmrecipe.tokenizer import load_from_dir

    ranks = data_dir / "tokenizer" / "r50k_base.tiktoken"
    copy = tmp_path / "ranks" / "r50k_base.tiktoken"
    copy.parent.mkdir()
    shutil.copyfile(ranks, copy)
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "Hello world. " * 40}) + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMRECIPE_GPT2_RANKS", raising=False)

    def offline(name):
        raise requests.exceptions.ConnectionError("Max retries exceeded (no network)")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    main(["prepare", "text", "--out", "s", "--tokenizer", f"gpt2:{copy}", "--input", "t.jsonl"])
    assert json.loads((tmp_path / "s" / "tokenizer_spec.json").read_text())["spec"] == "gpt2"
    assert load_from_dir(tmp_path / "s").encode("Hello world") == [15496, 995]
    copy.unlink()
    with pytest.raises(ValueError, match=r"ranks could not be loaded \(ConnectionError\)"):
        load_from_dir(tmp_path / "s")


def test_pretrain_vocabulary_too_small_for_the_shards_says_what_to_set(data_dir, tmp_path, monkeypatch):
    """GPT-2-tokenized shards with the default (tiny, 768-token) model: the error names both sizes and the
    setting that fixes it, before any folder is made."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMRECIPE_GPT2_RANKS", str(data_dir / "tokenizer" / "r50k_base.tiktoken"))
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "Hello world. " * 40}) + "\n")
    main(["prepare", "text", "--out", "s", "--tokenizer", "gpt2", "--input", "t.jsonl"])
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--data", "s", "--out", "p"])
    assert str(e.value) == ("error: s: tokenizer has 50257 tokens but the model's vocab_size is 768: "
                            "--set vocab_size=50257 (or --preset gpt2-124m)")
    assert not (tmp_path / "p").exists()
