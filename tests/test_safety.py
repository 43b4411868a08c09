"""Issue 36: nothing a user runs may destroy, overwrite or silently replace their work.

One test (or more) per finding of the probe, numbered as there; each failed on the code before the fix.
Bad inputs that only had to become one-line errors (finding 10 and 11) are cases in test_bad_inputs.py.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from llmrecipe.cli import _parser, main
from llmrecipe.config import parse_overrides
from llmrecipe.data.prepare import PrepareConfig, prepare
from llmrecipe.files import FolderBusy, folder_lock
from llmrecipe import recipe
from llmrecipe.recipe import run
from test_reliability import S6, _killed_after_step_7, straight  # noqa: F401  (a fixture)
from test_train import losses


def _error(args: list[str]) -> str:
    """The one-line error `llmrecipe ARGS` ends with (a test fails on exit 0 or a traceback)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
        except SystemExit as e:
            assert isinstance(e.code, str) and e.code.startswith("error:") and "\n" not in e.code, e.code
            return e.code
    pytest.fail(f"exit 0: {args}\n{err.getvalue()[-1000:]}")


# ---- 1. stale shards never become training data ----

def _prep(data_dir: Path, out: Path, files: list[str], **kw) -> dict:
    src = [str(data_dir / "pretrain" / f) for f in files]
    return prepare(PrepareConfig(source=src, out=str(out), tokenizer="bpe", bpe_vocab_size=512, workers=1,
                                 shard_tokens=20_000, **kw))


def test_prepare_refuses_a_used_folder_and_overwrite_replaces_only_its_own_files(data_dir, tmp_path):
    d = tmp_path / "d"
    big = _prep(data_dir, d, ["fineweb_edu_sample10BT_150.jsonl"])
    assert len(big["train_shards"]) > 2
    with pytest.raises(FileExistsError, match="not empty.*--overwrite"):
        _prep(data_dir, d, ["c4_demo.jsonl"])
    small = _prep(data_dir, d, ["c4_demo.jsonl"], overwrite=True, max_tokens=40_000)
    assert len(small["train_shards"]) < len(big["train_shards"])
    assert sorted(p.name for p in d.glob("train_*.bin")) == small["train_shards"]  # no stale shard left
    (d / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        _prep(data_dir, d, ["c4_demo.jsonl"], overwrite=True)
    assert (d / "notes.txt").read_text() == "mine" and (d / "meta.json").is_file()


def test_training_reads_the_shards_meta_lists_and_names_a_stray_one(small_corpus, tmp_path):
    from llmrecipe.data.loader import TokenWindows

    d = tmp_path / "d"
    shutil.copytree(small_corpus, d)
    shutil.copyfile(d / "train_000000.bin", d / "train_000009.bin")
    with pytest.raises(ValueError, match="train_000009.bin not listed in meta.json"):
        TokenWindows(d, "train", 16)


def test_two_prepares_into_one_folder_the_second_is_refused(data_dir, tmp_path):
    with folder_lock(tmp_path / "d"):  # another prepare holds the folder
        with pytest.raises(FolderBusy, match="in use by another llmrecipe process"):
            _prep(data_dir, tmp_path / "d", ["c4_demo.jsonl"])


# ---- 2. `run` never deletes finished stages unasked ----

SMALL = {"world.pretrain_docs": "400", "world.sft_conversations": "120", "world.preference_pairs": "48",
         "world.eval_items": "6", "max_steps": "12", "save_interval": "4", "eval_interval": "0",
         "sft.train.max_steps": "6", "dpo.train.max_steps": "4", "rl.train.max_steps": "3",
         "rl.train.batch_size": "2", "rl.group_size": "2", "eval.max_new_tokens": "8",
         "eval.suites": "mmlu_pro_category,gsm8k"}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small_run")
    run("tiny", out, dict(SMALL))
    return out


def _done(out: Path) -> dict[str, str]:
    return {p.parent.name: p.read_text() for p in sorted(out.glob("*/done.json"))}


def test_adding_a_tracker_to_a_finished_run_redoes_nothing(small_run, capsys):
    before = _done(small_run)
    logged = {**SMALL, "log": "tensorboard", "sft.train.log": "tensorboard", "dpo.train.log": "wandb"}
    run("tiny", small_run, logged)
    assert capsys.readouterr().out.count("up to date, skipped") == 8
    assert _done(small_run) == before


def test_changed_settings_stop_before_anything_is_deleted(small_run):
    before = _done(small_run)
    changed = (r"\[sft\] finished with other settings \(train\.lr: 0\.005 → 0\.001\): pass --redo sft to "
               r"retrain it and what follows \(dpo, rl, eval, export\)")
    with pytest.raises(recipe.StageChanged, match=changed):
        run("tiny", small_run, {**SMALL, "sft.train.lr": "0.001"})
    with pytest.raises(ValueError, match="--redo sfx: no such stage"):
        run("tiny", small_run, dict(SMALL), redo={"sfx"})
    assert _done(small_run) == before


def test_a_run_folder_of_another_preset_is_refused(small_run, data_dir):
    before = _done(small_run)
    with pytest.raises(FileExistsError, match="is a run of preset tiny, not gpt2-124m"):
        run("gpt2-124m", small_run, {"max_steps": "1"}, data_dir=str(data_dir))
    assert _done(small_run) == before and (small_run / "data" / "meta.json").is_file()


# ---- 3. commands never write over their own inputs ----

@pytest.fixture(scope="module")
def chain(tiny_base, data_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the tiny base and a 1-step SFT adapter on it, in one run folder."""
    from llmrecipe.lora import LoRAConfig
    from llmrecipe.train.loop import TrainConfig
    from llmrecipe.train.sft import SFTConfig, run_sft

    root = tmp_path_factory.mktemp("chain")
    shutil.copytree(tiny_base, root / "base")
    run_sft(SFTConfig(lora=LoRAConfig(r=2, alpha=4, dropout=0.0), base=str(root / "base"),
                      data=str(data_dir / "sft" / "ultrachat_200k_sample20.jsonl"),
                      train=TrainConfig(batch_size=2, grad_accum=1, max_steps=1, lr=1e-3, warmup_steps=0,
                                        log_interval=1, eval_interval=0, save_interval=100)), root / "sft")
    return root / "base", root / "sft"


def test_export_merge_and_onpolicy_refuse_to_overwrite_an_input(chain, tmp_path):
    base, sft = chain
    weights = (base / "model.safetensors").read_bytes()
    other = tmp_path / "other_model"
    shutil.copytree(base, other)
    assert "already holds a model folder" in _error(["export", "--model", str(sft), "--out", str(other)])
    assert f"is the input --model {base.resolve()}" in _error(
        ["merge", "--model", str(sft), "--out", str(base)])
    assert "lies inside the input --model" in _error(
        ["merge", "--model", str(sft), "--out", str(base / "merged")])
    d = tmp_path / "prefs"
    d.mkdir()
    (d / "preferences.jsonl").write_text("{}\n")
    assert "contains the input --data" in _error(
        ["onpolicy", "--sft", str(sft), "--data", str(d / "preferences.jsonl"), "--out", str(d)])
    assert (base / "model.safetensors").read_bytes() == weights
    assert (d / "preferences.jsonl").read_text() == "{}\n"
    shutil.rmtree(other / "checkpoints")  # a model folder as merge writes it (a run folder: --resume)
    assert "already holds a model folder" in _error(
        ["sft", "--base", str(base), "--data", str(d / "preferences.jsonl"), "--out", str(other),
         "--preset", "tiny"])


def test_export_and_merge_replace_only_their_own_earlier_output(chain, tmp_path):
    _, sft = chain
    for cmd in ("export", "merge"):
        out = tmp_path / cmd
        main([cmd, "--model", str(sft), "--out", str(out)])
        main([cmd, "--model", str(sft), "--out", str(out)])  # again: its own output, replaced


# ---- 4. repeated --set flags add up ----

def test_repeated_set_flags_accumulate_and_a_conflict_is_an_error():
    for cmd in (["pretrain", "--out", "x"], ["run", "--out", "x"], ["sft", "--out", "x"]):
        args = _parser().parse_args([*cmd, "--set", "max_steps=3", "--set", "lr=0.001", "n_layer=1"])
        assert parse_overrides(args.set) == {"max_steps": "3", "lr": "0.001", "n_layer": "1"}
    with pytest.raises(ValueError, match="'lr' twice"):
        parse_overrides(["lr=1", "lr=2"])


# ---- 5. final weights are verified; a non-finite step stops training ----

def _flip(f: Path) -> None:
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x01
    f.write_bytes(bytes(b))


def test_a_flipped_bit_in_final_weights_is_an_error_on_load(chain, tmp_path, data_dir):
    base, sft = chain
    shutil.copytree(base.parent, tmp_path / "run")
    _flip(tmp_path / "run" / "base" / "model.safetensors")
    msg = _error(["sft", "--base", str(tmp_path / "run" / "base"), "--data",
                  str(data_dir / "sft" / "ultrachat_200k_sample20.jsonl"), "--out", str(tmp_path / "o"),
                  "--preset", "tiny", "--set", "max_steps=1"])
    assert "model.safetensors: does not match its SHA-256" in msg and not (tmp_path / "o").exists()
    shutil.copyfile(base / "model.safetensors", tmp_path / "run" / "base" / "model.safetensors")
    _flip(tmp_path / "run" / "sft" / "adapter_model.safetensors")
    assert "adapter_model.safetensors: does not match its SHA-256" in _error(
        ["export", "--model", str(tmp_path / "run" / "sft"), "--out", str(tmp_path / "hf")])


def test_non_finite_gradients_stop_training_before_anything_is_saved(small_corpus, tmp_path, monkeypatch):
    from llmrecipe.train.loop import NonFiniteError
    from llmrecipe.train.pretrain import PretrainStage, run_pretrain
    from test_train import small_cfg

    calls, loss = [], PretrainStage.loss

    def blows_up_at_step_8(self, model, batch):
        calls.append(1)
        value, metrics = loss(self, model, batch)
        return (value * float("inf") if len(calls) == 8 else value), metrics

    monkeypatch.setattr(PretrainStage, "loss", blows_up_at_step_8)
    cfg = small_cfg(small_corpus, max_steps=10, save_interval=3, log_interval=5, keep_checkpoints=5)
    with pytest.raises(NonFiniteError, match=r"inf/nan at step 8 .*step_0000006"):
        run_pretrain(cfg, tmp_path / "run")
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert ckpts == ["step_0000003", "step_0000006"]  # not the step-9 checkpoint of nan weights
    assert not (tmp_path / "run" / "model.safetensors").exists()


# ---- 6. idle sockets cannot lock the server out ----

def _serve(tiny_base, **kw):
    from llmrecipe.serve import ModelServer, Server, make_handler

    httpd = Server(("127.0.0.1", 0), make_handler(ModelServer(str(tiny_base), {}, "cpu"), None), **kw)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def test_health_and_completions_answer_while_64_idle_sockets_trickle(tiny_base):
    httpd, url = _serve(tiny_base)
    idle = []
    try:
        for _ in range(64):
            s = socket.create_connection(httpd.server_address, timeout=10)
            s.sendall(b"P")  # a byte of a request that never completes
            idle.append(s)
        time.sleep(0.5)
        with urllib.request.urlopen(url + "/health", timeout=10) as r:
            assert r.status == 200
        body = json.dumps({"model": "base", "prompt": "The", "max_tokens": 2}).encode()
        req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
    finally:
        for s in idle:
            s.close()
        httpd.shutdown()
        httpd.server_close()


def test_a_request_that_trickles_past_the_deadline_is_closed(tiny_base):
    httpd, _ = _serve(tiny_base, request_deadline=1.0)
    try:
        s = socket.create_connection(httpd.server_address, timeout=10)
        t0 = time.time()
        for _ in range(6):  # a byte every 0.4 s: each read succeeds, the whole request never arrives
            try:
                s.sendall(b"G")
            except OSError:
                break
            time.sleep(0.4)
        assert s.recv(100) == b"" and time.time() - t0 < 5  # closed by the server after ~1 s
        s.close()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_stream_with_include_usage_ends_with_the_token_counts(tiny_base):
    httpd, url = _serve(tiny_base)
    try:
        body = json.dumps({"model": "base", "prompt": "The", "max_tokens": 5, "stream": True,
                           "stream_options": {"include_usage": True}}).encode()
        req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            events = [json.loads(x[6:]) for x in r.read().decode().split("\n\n") if x.startswith("data: {")]
        usage = events[-1]["usage"]  # the last chunk: no choices, the counts
        assert events[-1]["choices"] == [] and usage["prompt_tokens"] == 1
        assert 1 <= usage["completion_tokens"] <= 5
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_openai_fields_have_strict_types(tiny_base):
    httpd, url = _serve(tiny_base)
    try:
        for field, value in (("top_p", True), ("stream", "yes"), ("n", True), ("logprobs", True),
                             ("tools", [{"type": "function"}]), ("response_format", {"type": "json_object"}),
                             ("stream_options", {"include_usage": "yes"})):
            body = json.dumps({"model": "base", "prompt": "The", "max_tokens": 2, field: value}).encode()
            req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=30)
            assert e.value.code == 400 and json.loads(e.value.read())["error"]["param"] == field
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---- 7. complete or loud ----

def test_empty_or_duplicate_names_and_unrewardable_rl_rows_are_errors(tiny_base, data_dir, tmp_path):
    from llmrecipe.data.sources import DataError
    from llmrecipe.train.rl import load_problems

    ev = ["--data-dir", str(data_dir / "eval"), "--limit", "1"]
    assert "names a twice" in _error(["eval", "--compare", f"a={tiny_base}", f"a={tiny_base}", *ev])
    assert "no suite named" in _error(["eval", "--model", str(tiny_base), "--suites", "", *ev])
    assert "no suite named" in _error(["run", "--out", str(tmp_path / "r"), "--set", "eval.suites="])
    assert not (tmp_path / "r").exists()
    for answer in ("#### ", "#### many"):
        (tmp_path / "rl.jsonl").write_text(json.dumps({"question": "q", "answer": answer}) + "\n")
        with pytest.raises(DataError, match="rl.jsonl, row 1, field 'answer'.*not a number"):
            load_problems(str(tmp_path / "rl.jsonl"), "train", None)


def test_resume_with_other_data_is_refused(straight, tmp_path, small_corpus):  # noqa: F811
    from llmrecipe.train.pretrain import run_pretrain

    cfg = copy.deepcopy(_killed_after_step_7(straight, tmp_path / "run"))  # the fixture's is shared
    other = tmp_path / "other_data"
    shutil.copytree(small_corpus, other)
    cfg.data = str(other)
    with pytest.raises(ValueError, match="trained with data = .*this run gives .*other_data"):
        run_pretrain(cfg, tmp_path / "run", resume=True)


# ---- 8, 9. checkpoints are trusted only as far as they verify ----

def test_an_edited_state_json_is_skipped(straight, tmp_path, capsys):  # noqa: F811
    from llmrecipe.train.pretrain import run_pretrain

    cases = (({"step": 10}, "records step 10"), ({"elapsed": 0.5}, "its own SHA-256"))
    for i, (edit, why) in enumerate(cases):
        run_dir = tmp_path / str(i)
        cfg = _killed_after_step_7(straight, run_dir)
        f = run_dir / "checkpoints" / S6 / "state.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), **edit}))
        run_pretrain(cfg, run_dir, resume=True)
        out = capsys.readouterr()
        assert "step_0000003 (step 3)" in out.out and why in out.err, (out.out, out.err)
        assert losses(run_dir) == losses(straight[1])


def test_a_stale_higher_named_checkpoint_loses_and_is_pruned(straight, tmp_path, capsys):  # noqa: F811
    from llmrecipe.train.pretrain import run_pretrain

    run_dir = tmp_path / "run"
    cfg = copy.deepcopy(_killed_after_step_7(straight, run_dir))
    cfg.train.keep_checkpoints = 2
    shutil.copytree(run_dir / "checkpoints" / "step_0000003", run_dir / "checkpoints" / "step_0000090")
    with open(run_dir / "metrics.jsonl", "r+") as f:  # and a garbage line amid the log
        lines = f.read().splitlines()
        f.seek(0)
        f.write("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    run_pretrain(cfg, run_dir, resume=True)
    out = capsys.readouterr()
    assert f"{S6} (step 6)" in out.out and "dropped" in out.err
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert names == [S6, "step_0000009"], names  # the folder named 90 held step 3: pruned as the older
    assert losses(run_dir) == losses(straight[1])


# ---- 10. a damaged W&B state names its file ----

@pytest.mark.parametrize("content, why", [("[1, 2]", "expected a JSON object, got list"),
                                          ("{bad", "not valid JSON"),
                                          ('{"id": 5, "step": 1}', "'id' must be a string")])
def test_a_damaged_wandb_state_is_one_line_naming_it(tmp_path, monkeypatch, content, why):
    pytest.importorskip("wandb")
    from llmrecipe.track import Trackers

    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "wandb_state.json").write_text(content)
    with pytest.raises(ValueError, match=f"wandb_state.json: .*{why}"):
        Trackers("wandb", tmp_path, "pretrain", {}, resume_step=5)
