"""A run survives being stopped or killed at any moment, resumes exactly, and never loses its best model."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import pytest
import torch

import checkpoint
import devices
import prepare_shakespeare
import runlog
import stop_points
import train
from conftest import HUNG_S, REPO, tiny_train_args, wait_until
from model import GPT, GPTConfig

# Runs train.py, and kills the process with SIGKILL halfway through writing checkpoint number KILL_AT (1 = the first
# torch.save of the run): the temp file is left half written, as after a power cut.
KILL_DURING_SAVE = """
import os, signal, sys
import torch
import train
kill_at, saves, real_save = int(sys.argv[1]), [0], torch.save
def save_then_die(obj, f, *args, **kwargs):
    saves[0] += 1
    real_save(obj, f, *args, **kwargs)
    if saves[0] == kill_at:
        f.flush()
        f.truncate(f.tell() // 2)
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = save_then_die
train.main(sys.argv[2:])
"""


def metrics_of(out_dir):
    return [(m["iter_num"], m["train_loss"], m["val_loss"])
            for m in map(json.loads, (out_dir / "metrics.jsonl").read_text().splitlines())]


def assert_checkpoints_load(out_dir):
    for name in ("best.pt", "ckpt.pt"):
        if (out_dir / name).exists():
            checkpoint.load_checkpoint(out_dir / name)  # a UsageError here means a damaged checkpoint


def test_every_rng_state_round_trips_through_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    batch_gen = torch.Generator().manual_seed(4)
    np.random.normal()  # leaves a cached Gaussian in NumPy's legacy state
    torch.save({"rng": checkpoint.rng_state(batch_gen)}, tmp_path / "rng.pt")
    draws = lambda: (random.random(), np.random.normal(), torch.rand(2).tolist(),  # noqa: E731
                     torch.randint(100, (3,), generator=batch_gen).tolist())
    expected = draws()
    draws()  # move every generator on
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)  # plain data and tensors only
    checkpoint.restore_rng(loaded["rng"], batch_gen)
    assert draws() == expected


def test_resume_on_other_data_is_refused_naming_each_split(tiny_run, tiny_data, tmp_path, capsys):
    other = tmp_path / "other_data"  # the same text and vocabulary, split elsewhere
    prepare_shakespeare.main([f"--input={tiny_data / 'tiny.txt'}", f"--data_dir={other}", "--val_fraction=0.2"])
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with pytest.raises(SystemExit) as exc:
        train.main(tiny_train_args(other, run, init_from="resume", max_iters=50))
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert f"{other}/train.bin (16,000 tokens" in err and "is not the data it was trained on (18,000 tokens" in err
    assert f"{other}/val.bin (4,000 tokens" in err


def test_metrics_logged_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"iter_num": 0, "val_loss": 1.0}, {"iter": 10, "val_loss": 1.0},  # a line from before the rename, too
            {"iter_num": 20, "val_loss": 1.0}, {"iter_num": 30, "val_loss": 1.0}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"iter_num": 4')  # the last line cut short
    runlog.trim_metrics(path, 20)
    assert [json.loads(line)["iter_num"] for line in path.read_text().splitlines()] == [0, 10, 20]


def test_a_best_pt_newer_than_ckpt_pt_is_never_overwritten_by_a_worse_model(tiny_run, tiny_data, tmp_path):
    # As if the process died after writing best.pt and before writing ckpt.pt: best.pt knows a better loss.
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    best = checkpoint.load_checkpoint(run / "best.pt")
    best["best_val_loss"] = 0.5
    torch.save(best, run / "best.pt")
    before = (run / "best.pt").read_bytes()
    train.main(tiny_train_args(tiny_data, run, init_from="resume", max_iters=60))
    assert (run / "best.pt").read_bytes() == before
    assert checkpoint.load_checkpoint(run / "ckpt.pt")["iter_num"] == 60


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to simulate a full disk")
def test_a_full_disk_while_saving_ends_with_a_message_and_keeps_the_previous_checkpoint(tiny_run, tiny_data,
                                                                                          tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / "ckpt.pt").read_bytes()
    (run / "ckpt.pt.tmp").symlink_to("/dev/full")  # every write to the temp file fails with ENOSPC
    with pytest.raises(SystemExit) as exc:
        train.main(tiny_train_args(tiny_data, run, init_from="resume", max_iters=60))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert f"could not write {run}/ckpt.pt: No space left on device (" in err
    assert "the previous ckpt.pt is untouched; ckpt.pt holds iter 40, best.pt holds iter 50" in err
    assert "free some disk space, then resume: python train.py " in err and "--init_from=resume" in err
    assert (run / "ckpt.pt").read_bytes() == before and not os.path.lexists(run / "ckpt.pt.tmp")
    assert train.main(tiny_train_args(tiny_data, run, init_from="resume", max_iters=60))["iter_num"] == 60


def test_a_second_ctrl_c_quits_at_once_and_leaves_the_last_checkpoint_intact(tiny_data, tmp_path, monkeypatch,
                                                                             capsys):
    out = tmp_path / "run"
    calls, saves, real_get_batch, real_save = [0], [0], train.get_batch, torch.save

    def get_batch(*args):  # the first Ctrl-C comes during a step after the evaluation at iter 10
        calls[0] += 1
        if calls[0] == 20:
            os.kill(os.getpid(), signal.SIGINT)
        return real_get_batch(*args)

    def save(obj, f, *args, **kwargs):  # the second comes while the stop's ckpt.pt is being written
        saves[0] += 1
        real_save(obj, f, *args, **kwargs)
        if saves[0] == 3:  # best.pt and ckpt.pt at iter 10, then this one
            f.truncate(f.tell() // 2)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train, "get_batch", get_batch)
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(SystemExit) as exc:
        train.main(tiny_train_args(tiny_data, out))
    captured = capsys.readouterr()
    assert exc.value.code == 130 and "Traceback" not in captured.err
    assert "second stop request: quitting at once" in captured.out + captured.err
    assert checkpoint.load_checkpoint(out / "ckpt.pt")["iter_num"] == 10  # the one written at the last evaluation
    assert not (out / "ckpt.pt.tmp").exists()
    monkeypatch.undo()
    assert train.main(tiny_train_args(tiny_data, out, init_from="resume"))["iter_num"] == 40


def test_a_stop_during_an_evaluation_cuts_it_short_and_the_resumed_run_does_it_first(tiny_run, tiny_data, tmp_path,
                                                                                     monkeypatch, capsys):
    out = tmp_path / "run"
    step, batches = stop_points.stopping(train.train_step, train.eval_batches, 20, True, stop_points.ctrl_c)
    monkeypatch.setattr(train, "train_step", step)
    monkeypatch.setattr(train, "eval_batches", batches)  # a Ctrl-C once the evaluation at iter 20 read a batch
    with pytest.raises(SystemExit) as exc:
        train.main(tiny_train_args(tiny_data, out))
    captured = capsys.readouterr()
    assert exc.value.code == 130 and "Traceback" not in captured.err
    assert f"stopped at iter 20 before its evaluation; saved {out / 'ckpt.pt'}. Resume with: python " in captured.out
    ckpt = checkpoint.load_checkpoint(out / "ckpt.pt")
    assert ckpt["iter_num"] == 20 and ckpt["eval_cut"] and "optimizer" in ckpt  # the steps taken, not evaluated
    assert [m[0] for m in metrics_of(out)] == [0, 10]  # the cut evaluation logged nothing
    monkeypatch.undo()
    train.main(tiny_train_args(tiny_data, out, init_from="resume"))  # evaluates iter 20 first
    assert metrics_of(out) == metrics_of(tiny_run)  # the same curve as the run that was never stopped
    assert not checkpoint.load_checkpoint(out / "ckpt.pt")["eval_cut"]


def test_an_evaluation_gives_way_to_a_stop_within_a_batch(tiny_data):
    model = GPT(GPTConfig(block_size=16, vocab_size=65, n_layer=1, n_head=2, n_embd=32))
    ids = torch.randint(65, (5000,))
    cfg = train.TrainConfig(block_size=16, batch_size=8)
    stop = devices.StopRequest()
    assert train.estimate_loss(model, {"val": (ids, 0)}, cfg, nullcontext(), stop)["val_loss_tokens"] == 4999
    stop.requested = True
    assert train.estimate_loss(model, {"val": (ids, 0)}, cfg, nullcontext(), stop) is None
    assert model.training  # back in training mode, as after a whole evaluation
    ranks = devices.Ranks("cpu")
    assert ranks.from_master(None, ("val_loss",)) is None
    assert ranks.from_master({"val_loss": 1.5, "train_loss": 2.0}, ("val_loss",)) == {"val_loss": 1.5}


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 7])
def test_sigkill_while_a_checkpoint_is_written_leaves_loadable_checkpoints_and_resume_continues_the_curve(
        kill_at, tiny_run, tiny_data, tmp_path, capsys):
    # Saves alternate best.pt, ckpt.pt at iters 10, 20, 30, 40 (the tiny run's loss improves at every evaluation).
    out = tmp_path / "killed"
    args = tiny_train_args(tiny_data, out)
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(kill_at), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=HUNG_S)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert_checkpoints_load(out)
    if not (out / "ckpt.pt").exists():  # killed before the first ckpt.pt was complete: nothing to resume
        with pytest.raises(SystemExit):
            train.main(args + ["--init_from=resume"])
        assert f"cannot resume: {out}/ckpt.pt not found" in capsys.readouterr().err
        return
    train.main(args + ["--init_from=resume"])
    assert metrics_of(out) == metrics_of(tiny_run)  # the same curve as the run that was never killed


@pytest.mark.parametrize("delay", [0.2, 0.7, 1.5])
def test_sigkill_at_any_moment_leaves_loadable_checkpoints_and_resume_works(delay, tiny_data, tmp_path):
    # A checkpoint pair at every step, so a kill lands during or between saves, in steps and evaluations.
    out = tmp_path / "killed"
    args = tiny_train_args(tiny_data, out, max_iters=100000, eval_interval=1, eval_iters=1)
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_until((out / "ckpt.pt").exists, proc, "train.py did not start training")
    time.sleep(delay)  # any moment will do: the assertions below hold wherever the kill lands
    proc.kill()
    proc.communicate(timeout=HUNG_S)
    assert_checkpoints_load(out)
    resumed_from = checkpoint.load_checkpoint(out / "ckpt.pt")["iter_num"]
    summary = train.main(tiny_train_args(tiny_data, out, max_iters=resumed_from + 3, eval_interval=1, eval_iters=1,
                                         init_from="resume"))
    assert summary["iter_num"] == resumed_from + 3
    iters = [m[0] for m in metrics_of(out)]
    assert iters == list(range(resumed_from + 4))  # every evaluation once, none lost or repeated
