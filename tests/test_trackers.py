"""The trackers nanoGPT users bring: Weights & Biases (offline here) and TensorBoard receive every evaluation of
metrics.jsonl and the config, read back with their own file formats; off, neither package is even imported."""

import glob
import json
import struct
import subprocess
import sys

import pytest

import train
from conftest import HUNG_S, REPO, tiny_train_args
from runlog import read_metrics


def wandb_records(path: str) -> list:
    """The protobuf records of a .wandb file: LevelDB's log format (32 KiB blocks of records, each with a 7-byte
    header: checksum, length, type 1 full / 2 first / 3 middle / 4 last) after a 7-byte W&B header."""
    from wandb.proto import wandb_internal_pb2
    data, block, position, pieces, records = open(path, "rb").read(), 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's last bytes, too few for a header: padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if position + 7 + length > len(data):
            break  # a record still being written
        pieces += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return records


def test_wandb_offline_receives_every_evaluation_and_the_config(tiny_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train.main(tiny_train_args(tiny_data, out, max_iters=20, wandb_log=True, wandb_project="tests",
                               wandb_run_name="tiny"))
    import wandb
    wandb.teardown()  # W&B's own process writes the file after run.finish() returns: wait until it is done
    (path,) = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    records = wandb_records(path)
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    expected = read_metrics(out)
    assert [row["_step"] for row in history] == [m["iter_num"] for m in expected] == [0, 10, 20]
    for row, metrics in zip(history, expected):
        assert {key: row[key] for key in metrics if key != "iter_num"} == pytest.approx(
            {key: value for key, value in metrics.items() if key != "iter_num"})
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in run.config.update}
    assert run.project == "tests" and run.display_name == "tiny"
    assert config["n_layer"] == 1 and config["device"] == "cpu"  # the resolved config: auto is gone


def test_tensorboard_receives_every_evaluation(tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    train.main(tiny_train_args(tiny_data, out, max_iters=20, tensorboard_log=True))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for key in ("val_loss", "train_loss", "val_acc", "lr", "tokens_seen"):
        scalars = [(event.step, event.value) for event in events.Scalars(key)]
        assert scalars == [(m["iter_num"], pytest.approx(m[key])) for m in read_metrics(out)]


def test_a_missing_tracker_package_is_one_line_before_any_work(tiny_data, tmp_path, monkeypatch, capsys):
    import importlib.util
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("wandb", "tensorboard")
                        else real_find_spec(name, *a))
    with pytest.raises(SystemExit) as exc:
        train.main(tiny_train_args(tiny_data, tmp_path / "run", wandb_log=True, tensorboard_log=True))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert "'wandb_log' is on, but the wandb package is not installed: pip install wandb (or leave wandb_log " \
           "off)" in err
    assert "'tensorboard_log' is on, but the tensorboard package is not installed: pip install tensorboard" in err
    assert not (tmp_path / "run").exists()


def test_off_neither_tracker_nor_transformers_is_imported(tiny_data, tmp_path):
    """The default path needs none of the optional packages: a run and the scripts import none of them."""
    code = (f"import sys, train, sample, plot, compare, tune, bench, export\n"
            f"train.main({tiny_train_args(tiny_data, tmp_path / 'run', max_iters=5)!r})\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'wandb', 'tensorboard', 'transformers', "
            "'safetensors', 'tokenizers'}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=HUNG_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
