"""Training in several processes with torchrun (DistributedDataParallel, gloo on the CPU)."""

import json
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
import devices
import train
from conftest import HUNG_S, REPO, tiny_train_args
from configurator import UsageError


def torchrun(args, script="train.py", **environ):
    """A script (train.py, or tests/stop_points.py with the stops environ asks for) in 2 CPU processes under torchrun,
    one thread each (2 cores: more would only oversubscribe them)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, *args]
    return subprocess.Popen(command, cwd=REPO, env=os.environ | {"OMP_NUM_THREADS": "1"} | environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc) -> tuple[str, str]:
    """torchrun's output once it ends; a hung run (a rank waiting for the others) is stopped and fails the test."""
    try:
        return proc.communicate(timeout=HUNG_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun passes it on, and kills what has not exited 30 s later
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"torchrun hung:\n{stdout}\n{stderr}")


def curve(out_dir):
    return [(m["iter_num"], m["train_loss"], m["val_loss"], m["tokens_seen"])
            for m in map(json.loads, (out_dir / "metrics.jsonl").read_text().splitlines())]


def test_two_processes_train_what_one_does_and_stop_and_resume_together(tiny_data, tmp_path):
    # 2 processes with 1 micro-batch each, against one process with 2 per step: the same batches, so the same model,
    # up to the order of float sums. Dropout is off: each process draws its own dropout masks.
    settings = dict(dropout=0, gradient_accumulation_steps=2, max_iters=60)
    one, two, end = tmp_path / "one", tmp_path / "two", 60

    # A Ctrl-C to rank 1 alone after its step 23 (torchrun passes a Ctrl-C on to every process, but a signal may also
    # reach one only): both ranks stop there, as on CPUs they agree at every step, and rank 0 saves; else one of them
    # would wait forever for the other.
    proc = torchrun(tiny_train_args(tiny_data, two, **settings), "tests/stop_points.py", STOP_RANK="1",
                    STOP_AFTER_STEP="23")
    stdout, stderr = finish(proc)
    assert proc.returncode != 0 and stdout.count("Resume with: torchrun") == 1, stdout + stderr
    assert "stopped at iter 23; saved" in stdout
    assert f'File "{REPO}/' not in stderr  # no traceback from either process (torchrun reports their exit status)
    # A SIGTERM to torchrun during rank 0's evaluation at iter 40 (23 + 17 steps): torchrun passes it on to both, the
    # evaluation is cut short, both stop and rank 0 saves; the resumed run evaluates iter 40 first.
    proc = torchrun(tiny_train_args(tiny_data, two, init_from="resume", **settings), "tests/stop_points.py",
                    STOP_IN_EVALUATION_AFTER_STEP="17")
    stdout, stderr = finish(proc)
    assert proc.returncode != 0 and "stopped at iter 40 before its evaluation; saved" in stdout, stdout + stderr
    assert f'File "{REPO}/' not in stderr
    assert [row[0] for row in curve(two)] == [0, 10, 20, 30]

    train.main(tiny_train_args(tiny_data, one, **settings))
    proc = torchrun(tiny_train_args(tiny_data, two, init_from="resume", **settings))
    stdout, stderr = finish(proc)
    assert proc.returncode == 0, stderr
    assert stdout.count("parameters |") == stdout.count("best val loss") == 1  # rank 0 prints, rank 1 does not

    expected, got = curve(one), curve(two)
    assert [row[0] for row in got] == [row[0] for row in expected] == list(range(0, end + 1, 10))
    for (it, train_loss, val_loss, tokens), (_, want_train, want_val, want_tokens) in zip(got, expected):
        assert tokens == want_tokens == it * 2 * 8 * 16  # global tokens: both processes' micro-batches
        assert train_loss == pytest.approx(want_train, rel=1e-4) and val_loss == pytest.approx(want_val, rel=1e-4)

    # Only rank 0 wrote, one file each, and the checkpoint is the plain model's, as from one process.
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert json.loads((two / "run.json").read_text())["world_size"] == 2
    assert json.loads((two / "summary.json").read_text())["status"] == "finished"
    ckpt, single = checkpoint.load_checkpoint(two / "ckpt.pt"), checkpoint.load_checkpoint(one / "ckpt.pt")
    assert ckpt["iter_num"] == end and ckpt["model"].keys() == single["model"].keys()
    for name, weight in ckpt["model"].items():
        torch.testing.assert_close(weight, single["model"][name], rtol=1e-3, atol=1e-5)


def test_two_processes_spend_a_time_budget_together(tiny_data, tmp_path):
    # Each process reads its own clock; they agree on the mean at every step, so both take the same rates and stop at
    # the same step (else one would wait forever for the other's gradients, and the test would fail as hung).
    proc = torchrun(tiny_train_args(tiny_data, tmp_path / "run", max_iters=100_000, max_time=2, eval_interval=100_000,
                                    gradient_accumulation_steps=2))
    stdout, stderr = finish(proc)
    assert proc.returncode == 0, stdout + stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 1 < summary["iter_num"] < 100_000 and summary["train_s"] >= 2 and summary["max_time"] == 2


def test_gradient_accumulation_steps_are_shared_out_equally():
    assert devices.micro_steps_per_rank(8, 1) == 8
    assert devices.micro_steps_per_rank(8, 4) == 2
    assert devices.Ranks("cpu", rank=3, world_size=4, ddp=True).micro_steps(8) == range(6, 8)
    with pytest.raises(UsageError) as err:
        devices.micro_steps_per_rank(6, 4)
    assert ("gradient_accumulation_steps (6) must be divisible by the number of processes (4)" in str(err.value)
            and "--gradient_accumulation_steps=8" in str(err.value))


def test_indivisible_accumulation_is_refused_before_any_process_waits(tiny_data, tmp_path, monkeypatch, capsys):
    # As torchrun would start rank 0 of 2: the check must come before init_process_group, which would wait for rank 1.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exc:
        train.main(tiny_train_args(tiny_data, tmp_path / "run", gradient_accumulation_steps=3))
    assert exc.value.code == 2
    assert "gradient_accumulation_steps (3) must be divisible by the number of processes (2)" in capsys.readouterr().err
    assert not torch.distributed.is_initialized()


def test_torchrun_environment_and_devices():
    assert devices.distributed_env({}) is None
    assert devices.distributed_env({"RANK": "-1"}) is None
    assert devices.distributed_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}) == (3, 1, 4)
    with pytest.raises(UsageError, match="start several processes with torchrun"):
        devices.distributed_env({"RANK": "0"})
    assert devices.resolve_ddp_device("cpu", 1) == "cpu"
    for device in ("mps", "cuda:1"):
        with pytest.raises(UsageError, match="cannot be used under torchrun"):
            devices.resolve_ddp_device(device, 0)
    if not torch.cuda.is_available():
        assert devices.resolve_ddp_device("auto", 1) == "cpu"
        with pytest.raises(UsageError, match="no CUDA GPU"):
            devices.resolve_ddp_device("cuda", 0)
