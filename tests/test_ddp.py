"""Training in several processes with torchrun (DistributedDataParallel, gloo on the CPU)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoint
import devices
import train
from conftest import HUNG_S, REPO, tiny_train_args, wait_until
from configurator import UsageError


def torchrun(args, **popen_args):
    """train.py in 2 CPU processes under torchrun, one thread each (2 cores: more would only oversubscribe them)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *args]
    return subprocess.Popen(command, cwd=REPO, env=os.environ | {"OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen_args)


def finish(proc) -> tuple[str, str]:
    """torchrun's output once it ends; a hung run (a rank waiting for the others) is stopped and fails the test."""
    try:
        return proc.communicate(timeout=HUNG_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun passes it on, and kills what has not exited 30 s later
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"torchrun hung:\n{stdout}\n{stderr}")


def worker_pid(launcher_pid: int, rank: int) -> int | None:
    """The pid of the process torchrun started as `rank`, found in /proc (Linux) by its parent and RANK variable."""
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # not a process, or one that ended meanwhile
        if parent == launcher_pid and f"RANK={rank}".encode() in environment:
            return int(entry.name)
    return None


def curve(out_dir):
    return [(m["iter_num"], m["train_loss"], m["val_loss"], m["tokens_seen"])
            for m in map(json.loads, (out_dir / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's processes in /proc (Linux)")
def test_two_processes_train_what_one_does_and_stop_and_resume_together(tiny_data, tmp_path):
    # 2 processes with 1 micro-batch each, against one process with 2 per step: the same batches, so the same model,
    # up to the order of float sums. Dropout is off: each process draws its own dropout masks.
    settings = dict(dropout=0, gradient_accumulation_steps=2, lr_decay_iters=60)
    one, two = tmp_path / "one", tmp_path / "two"

    # A stop signal for rank 1 alone (torchrun passes a Ctrl-C on to every process, but a signal may also reach one
    # only): both ranks must stop at the same step and rank 0 must save, or one of them would wait forever. Sent once
    # training has begun; wherever it lands, the runs below go on to the evaluation after it.
    proc = torchrun(tiny_train_args(tiny_data, two, max_iters=100000, **settings))
    wait_until(lambda: (two / "metrics.jsonl").is_file() and (two / "metrics.jsonl").read_text(), proc,
               "torchrun did not start training")
    rank1 = worker_pid(proc.pid, rank=1)
    assert rank1 is not None, "rank 1 not found among torchrun's processes"
    os.kill(rank1, signal.SIGINT)
    stdout, stderr = finish(proc)
    assert stdout.count("Resume with: torchrun") == 1, stdout + stderr
    assert f'File "{REPO / "train.py"}"' not in stderr  # no traceback from train.py (torchrun reports the exit)
    stopped_at = torch.load(two / "ckpt.pt", weights_only=True)["iter_num"]
    end = max(60, stopped_at // 10 * 10 + 10)  # at least one evaluation past the stop

    train.main(tiny_train_args(tiny_data, one, max_iters=end, **settings))
    proc = torchrun(tiny_train_args(tiny_data, two, max_iters=end, init_from="resume", **settings))
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
