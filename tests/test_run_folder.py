"""One run at a time in an out_dir, and a new run never loses an old one: the folder lock, keeping the previous run,
and files that are whole after any crash."""

import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

import files
import runlog
import train
import tune
from checkpoint import RunState
from configurator import UsageError
from conftest import HUNG_S, REPO, tiny_train_args, wait_until


def snapshot(folder):
    """Every file under folder (the lock file aside) and its bytes."""
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != files.LOCK_FILE}


def siblings(out_dir):
    return sorted(p.name for p in out_dir.parent.iterdir() if p != out_dir and p.name.startswith(out_dir.name))


def test_a_second_run_on_a_held_folder_stops_at_once_and_changes_nothing(tiny_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    before = snapshot(out)
    with files.lock_folder(out):
        for init_from in ("scratch", "resume"):
            with pytest.raises(SystemExit) as exc:
                train.main(tiny_train_args(tiny_data, out, init_from=init_from))
            err = capsys.readouterr().err
            assert exc.value.code == 2 and "Traceback" not in err
            assert f"error: out_dir '{out}' is in use by another run (process {os.getpid()} on " in err
    assert snapshot(out) == before and siblings(out) == []


def start_training(tiny_data, out, **overrides):
    """A train.py process that trains for as long as it is let; returns once it holds out's lock."""
    args = tiny_train_args(tiny_data, out, max_iters=100000, eval_interval=5, eval_iters=1, **overrides)
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_until(lambda: files.folder_in_use(out) is not None and (out / "metrics.jsonl").is_file(), proc,
               "train.py did not start")
    return proc


def test_two_train_processes_on_one_folder_and_a_lock_left_by_sigkill(tiny_data, tmp_path):
    out = tmp_path / "run"
    first = start_training(tiny_data, out)
    try:
        second = subprocess.run([sys.executable, "train.py", *tiny_train_args(tiny_data, out)], cwd=REPO,
                                capture_output=True, text=True, timeout=HUNG_S)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"is in use by another run (process {first.pid} on " in second.stderr
        assert "train.py" in second.stderr.splitlines()[-1]  # the holder's command line
    finally:
        first.kill()  # SIGKILL: no chance to clean up
        first.communicate(timeout=HUNG_S)
    killed_metrics = (out / "metrics.jsonl").read_bytes()
    # The kill released the lock: the next run starts at once, and keeps the killed run's results aside.
    summary = train.main(tiny_train_args(tiny_data, out, max_iters=10))
    assert summary["iter_num"] == 10
    (kept,) = siblings(out)
    assert (out.parent / kept / "metrics.jsonl").read_bytes() == killed_metrics


def test_a_new_run_keeps_the_previous_one_beside_it(tiny_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    before = snapshot(out)
    started = runlog.read_run_info(out)["started"]
    capsys.readouterr()
    train.main(tiny_train_args(tiny_data, out, max_iters=10))
    (kept,) = siblings(out)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.strptime(started, "%Y-%m-%dT%H:%M:%S%z"))
    assert kept == f"run-{stamp}"  # named after the time the previous run started
    assert snapshot(out.parent / kept) == before  # every file of it, unchanged
    assert f"moved the previous run in {out} to {out.parent / kept}" in capsys.readouterr().out
    assert runlog.read_summary(out)["iter_num"] == 10  # and the new run is in out
    assert [m["iter_num"] for m in runlog.read_metrics(out)] == [0, 10]
    # Once more: a second folder, never the first one replaced.
    train.main(tiny_train_args(tiny_data, out, max_iters=10))
    assert len(siblings(out)) == 2 and snapshot(out.parent / kept) == before


def test_overwrite_replaces_the_previous_run_and_says_so(tiny_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    train.main(tiny_train_args(tiny_data, out, max_iters=10, overwrite=True))
    assert siblings(out) == [] and runlog.read_summary(out)["iter_num"] == 10
    assert f"deleted the previous run's files in {out} (--overwrite=True)" in capsys.readouterr().out


def test_a_run_stopped_before_its_first_evaluation_has_nothing_to_keep(tiny_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "run.json").write_text("{}")
    (out / "metrics.jsonl").write_text("")
    train.main(tiny_train_args(tiny_data, out, max_iters=10))
    assert siblings(out) == [] and runlog.read_summary(out)["iter_num"] == 10


def test_a_failed_write_of_metrics_jsonl_leaves_its_old_lines_whole(tiny_run, tmp_path, monkeypatch):
    """metrics.jsonl is written anew through a temp file at each evaluation: a crash mid-write (here the disk
    failing at fsync) leaves the lines written before, with no line cut short."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    before = (out / "metrics.jsonl").read_bytes()
    last = runlog.read_metrics(out)[-1]

    def disk_fails(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "fsync", disk_fails)
    evaluation = {"val_loss": 2.0, "train_loss": 2.0, "val_counts": torch.ones(4, 3), "val_loss_tokens": 100,
                  "train_loss_tokens": 100}
    with pytest.raises(UsageError, match="could not write .*metrics.jsonl: Input/output error"):
        runlog.log_evaluation(out, RunState(iter_num=50, tokens_seen=last["tokens_seen"] + 1280), evaluation, 1e-3,
                              improved=False)
    assert (out / "metrics.jsonl").read_bytes() == before
    assert not (out / "metrics.jsonl.tmp").exists()


def test_a_second_search_with_the_same_name_stops_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "base.py"
    config.write_text("device = 'cpu'\n")
    with files.lock_folder(tmp_path / "out" / "tune-base"):
        with pytest.raises(SystemExit) as exc:
            tune.main([str(config), "n_layer=1,2"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"search folder 'out/tune-base' is in use by another run (process {os.getpid()}" \
        in err
    assert sorted(p.name for p in (tmp_path / "out" / "tune-base").iterdir()) == [files.LOCK_FILE]


def test_a_trial_whose_folder_is_in_use_fails_and_leaves_it_alone(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "base.py"
    config.write_text(f"data_dir = {str(tiny_data)!r}\ndevice = 'cpu'\ncompile = False\nn_layer = 1\nn_head = 2\n"
                      "n_embd = 32\nblock_size = 16\nbatch_size = 8\neval_iters = 2\nmax_iters = 10\n")
    busy = tmp_path / "out" / "tune-base" / "n_embd=32"
    with files.lock_folder(busy):
        rows = tune.main([str(config), "n_embd=32"])
    assert rows[0]["status"] == "failed" and f"in use by process {os.getpid()}" in rows[0]["error"]
    assert sorted(p.name for p in busy.iterdir()) == [files.LOCK_FILE]  # no train.log, no run files
