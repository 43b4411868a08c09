"""Issue 17: live tracking. What goes to metrics.jsonl goes to TensorBoard and W&B (offline) under the same
names and steps, also across a kill and --resume (no duplicated or stale steps), and pre-training logs
samples.

W&B's offline run files are read back with a reader of their documented record format (LevelDB's log
format: 32 KiB blocks of CRC-checked chunks, each record a protobuf `Record` from wandb's own schema) —
wandb 0.31 no longer ships a Python reader."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from test_train import simulate_kill, small_cfg


def tb_scalars(run_dir) -> dict[str, dict[int, float]]:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    out = {}
    for tag in ea.Tags()["scalars"]:
        events = ea.Scalars(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), (tag, steps)  # each step once, even after a resume
        out[tag] = {e.step: e.value for e in events}
    return out


def jsonl_scalars(run_dir) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)):
                out.setdefault(k, {})[r["step"]] = float(v)
    return out


def assert_same(tb: dict, js: dict) -> None:
    assert set(tb) == set(js), (sorted(tb), sorted(js))
    for tag in js:
        assert tb[tag].keys() == js[tag].keys(), tag
        for step, v in js[tag].items():  # TensorBoard stores float32: equal to its precision
            assert tb[tag][step] == pytest.approx(v, rel=1e-6, abs=1e-30), (tag, step)


def test_tensorboard_equals_metrics_jsonl_across_a_kill_and_resume(small_corpus, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llmrecipe.train.pretrain import run_pretrain

    cfg = small_cfg(small_corpus, max_steps=8, save_interval=4, eval_interval=4, keep_checkpoints=5,
                    log="tensorboard")
    straight = tmp_path / "straight"
    run_pretrain(cfg, straight)
    assert_same(tb_scalars(straight), jsonl_scalars(straight))
    logged = set(tb_scalars(straight))
    assert {"loss", "lr", "grad_norm", "tokens_per_sec", "tokens", "elapsed", "val_loss"} <= logged
    ea = EventAccumulator(str(straight / "tb"))
    ea.Reload()
    assert "samples/text_summary" in ea.Tags()["tensors"]  # the fixed prompts' continuations, each evaluation
    # killed after step 6 with its event files holding steps 1-8: the resume must purge 5-8 and relog them
    killed = simulate_kill(straight, tmp_path / "killed", last_checkpoint=4, logged=6, final=8)
    run_pretrain(cfg, killed, resume=True)
    assert_same(tb_scalars(killed), jsonl_scalars(killed))
    assert sorted(tb_scalars(killed)["loss"]) == list(range(1, 9))


def test_sft_logs_the_same_scalars_to_both_trackers(tiny_base, data_dir, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llmrecipe.lora import LoRAConfig
    from llmrecipe.train.loop import TrainConfig
    from llmrecipe.train.sft import SFTConfig, run_sft

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = SFTConfig(lora=LoRAConfig(r=4, alpha=8, dropout=0.0), base=str(tiny_base),
                    data=str(data_dir / "sft" / "ultrachat_200k_sample20.jsonl"),
                    train=TrainConfig(batch_size=2, grad_accum=1, max_steps=3, lr=1e-3, warmup_steps=0,
                                      schedule="constant", log_interval=1, eval_interval=0, save_interval=100,
                                      log="tensorboard,wandb"))
    run_sft(cfg, tmp_path / "sft")
    js = jsonl_scalars(tmp_path / "sft")
    assert_same(tb_scalars(tmp_path / "sft"), js)
    ea = EventAccumulator(str(tmp_path / "sft" / "tb"))
    ea.Reload()
    assert "samples/text_summary" in ea.Tags()["tensors"]  # replies to the fixed chat prompts, last step
    runs, hist = wandb_history(tmp_path / "sft")
    assert len(runs) == 1 and runs[0]["config"]["lora"]["r"] == 4
    assert {k: hist[k] for k in js} == js and isinstance(hist["samples"][3], str)


def test_unknown_tracker_is_a_config_error(tmp_path):
    from llmrecipe.cli import main

    with pytest.raises(SystemExit, match="config key 'train.log' = 'tensorbored'"):
        main(["pretrain", "--preset", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
              "--log", "tensorbored"])


def wandb_records(path: Path) -> list[bytes]:
    """The records of one `run-ID.wandb` file: a 7-byte header (":W&B", magic 0xBEE1, version 0), then
    32 KiB blocks of chunks (crc32 of type+data, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    raw = path.read_bytes()
    assert raw[:4] == b":W&B" and struct.unpack("<HB", raw[4:7]) == (0xBEE1, 0), raw[:7]
    pos, part, out = 7, b"", []
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        crc, n, kind = struct.unpack("<IHB", raw[pos: pos + 7])
        if (crc, n, kind) == (0, 0, 0):
            break
        data = raw[pos + 7: pos + 7 + n]
        assert zlib.crc32(bytes([kind]) + data) == crc, f"{path}: bad chunk at byte {pos}"
        part, pos = part + data, pos + 7 + n
        if kind in (1, 4):
            out.append(part)
            part = b""
    return out


def wandb_history(run_dir) -> tuple[list[dict], dict[str, dict[int, object]]]:
    """Every offline run file of the stage, oldest first: their run records, and the history as
    {key: {step: value}}, asserting that no step was sent twice."""
    from wandb.proto import wandb_internal_pb2 as pb

    runs, hist = [], {}
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda f: f.parent.name)
    assert files, f"no W&B offline run under {run_dir}"
    for f in files:
        for data in wandb_records(f):
            rec = pb.Record()
            rec.ParseFromString(data)
            if rec.WhichOneof("record_type") == "run":
                runs.append({"id": rec.run.run_id, "group": rec.run.run_group, "name": rec.run.display_name,
                             "config": {u.key: json.loads(u.value_json) for u in rec.run.config.update}})
            elif rec.WhichOneof("record_type") == "history":
                for item in rec.history.item:
                    key = item.key or "/".join(item.nested_key)
                    if key.startswith("_"):
                        continue
                    assert rec.history.step.num not in hist.get(key, {}), (key, rec.history.step.num)
                    hist.setdefault(key, {})[rec.history.step.num] = json.loads(item.value_json)
    return runs, hist


class Killed(Exception):
    pass


def test_wandb_offline_equals_metrics_jsonl_across_a_kill_and_resume(small_corpus, tmp_path, monkeypatch):
    """A pre-training run killed after step 6 (checkpoint at 4) and resumed: W&B holds steps 1-8 once
    each, equal to metrics.jsonl; the resumed process continues the same W&B run id."""
    pytest.importorskip("wandb")
    from llmrecipe.train.pretrain import PretrainStage, run_pretrain

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = small_cfg(small_corpus, max_steps=8, save_interval=4, eval_interval=4, log="wandb")
    run = tmp_path / "demo" / "base"
    batch = PretrainStage.batch

    def dies_at_step_6(self, step, micro):  # step is 0-based: the 7th step's batch never arrives
        if step == 6:
            raise Killed
        return batch(self, step, micro)

    monkeypatch.setattr(PretrainStage, "batch", dies_at_step_6)
    with pytest.raises(Killed):
        run_pretrain(cfg, run)
    monkeypatch.setattr(PretrainStage, "batch", batch)
    assert json.loads((run / "wandb_state.json").read_text())["step"] == 6
    run_pretrain(cfg, run, resume=True)

    runs, hist = wandb_history(run)
    assert len(runs) == 2 and runs[0]["id"] == runs[1]["id"], runs  # one W&B run, continued
    assert runs[0]["group"] == "demo" and runs[0]["name"] == "demo/pretrain"
    assert runs[0]["config"]["train"]["max_steps"] == 8  # the resolved config is the run's config
    js = jsonl_scalars(run)
    assert set(js) == set(hist) - {"samples"}, (sorted(js), sorted(hist))
    for key in js:
        assert sorted(hist[key]) == sorted(js[key]), key
        for step, v in js[key].items():
            # steps 5-6 ran twice: W&B keeps the first process's values, metrics.jsonl the second's;
            # they are bit-identical except for the timings
            if key in ("tokens_per_sec", "elapsed") and step in (5, 6):
                continue
            assert hist[key][step] == v, (key, step)
    assert sorted(js["loss"]) == list(range(1, 9))
    assert isinstance(hist["samples"][8], str) and hist["samples"][8]  # the fixed prompts' continuations


@pytest.mark.parametrize("kind, module", [("wandb", "wandb"), ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_tracker_package_is_named_in_one_line(kind, module, small_corpus, tmp_path, monkeypatch):
    from llmrecipe.cli import main

    monkeypatch.setitem(__import__("sys").modules, module, None)  # `import` of it now fails, as uninstalled
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--data", str(small_corpus), "--out", str(tmp_path / "o"), "--log", kind,
              "--set", "max_steps=1", "n_layer=1", "n_embd=16", "n_head=1", "vocab_size=512",
              "block_size=16"])
    assert str(e.value) == (f"error: --log {kind} needs the {kind} package: pip install 'llmrecipe[track]'")
