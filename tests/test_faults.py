"""Faults of the machine, not the user's mistakes: a write that fails (no space, a quota, a read-only disk, a
permission, an I/O error), injected at a chosen byte into each kind of file the harness writes, and a real full disk
where the machine lets the test mount one. Each ends in one line that names the file and the cause, with exit status
2, no traceback, the file's previous content intact and no temp file left; a run also says which iteration each of
its checkpoints holds and how to resume, and stops at once. Before a run starts, its out_dir must have room for its
checkpoints."""

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import bench
import checkpoint
import compare
import explain
import files
import plot
import prepare_shakespeare
import train
import tune
from conftest import tiny_train_args
from runlog import read_metrics
from test_bench import tiny_config

CAUSES = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
          errno.EROFS: "Read-only file system", errno.EACCES: "Permission denied", errno.EIO: "Input/output error"}


class FailingFile:
    """A file open for writing whose writes fail with OSError(number) once `after` bytes have gone in: a disk that
    fills up, or fails, halfway through the file."""

    def __init__(self, f, number: int, after: int):
        self.f, self.number, self.room = f, number, after

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(self.number, os.strerror(self.number), self.f.name)
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fail_writes_of(monkeypatch, name: str, number: int = errno.ENOSPC, after: int = 100) -> None:
    """Every write_atomic of a file called name fails after `after` bytes with OSError(number)."""
    def failing_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return FailingFile(f, number, after) if Path(path).name == name + ".tmp" else f
    monkeypatch.setattr(files, "open", failing_open, raising=False)


def one_line(capsys, main, argv) -> str:
    """The one error line of main(argv), which must exit with status 2 and no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exc.value.code == 2 and "Traceback" not in err and len(errors) == 1, err
    return errors[0]


def no_temp_files(folder: Path) -> bool:
    return not list(folder.rglob("*.tmp"))


@pytest.mark.parametrize("number", CAUSES)
def test_a_checkpoint_that_cannot_be_written_stops_the_run_and_says_what_is_kept(number, tiny_run, tiny_data,
                                                                                 tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = {name: (run / name).read_bytes() for name in ("ckpt.pt", "best.pt")}
    fail_writes_of(monkeypatch, "ckpt.pt", number, after=50_000)  # the disk fails partway through the file
    line = one_line(capsys, train.main, tiny_train_args(tiny_data, run, max_iters=60, init_from="resume"))
    assert f"could not write {run / 'ckpt.pt'}: {CAUSES[number]}" in line
    assert "the previous ckpt.pt is untouched; ckpt.pt holds iter 40, best.pt holds iter 50" in line
    assert line.endswith(" --init_from=resume") and f"To go on, {files.DISK_FIXES[number]}, then resume: " in line
    if number == errno.ENOSPC:
        assert "MB to write, " in line and " MB free there)" in line
    assert (run / "ckpt.pt").read_bytes() == before["ckpt.pt"] and no_temp_files(run)
    assert [m["iter_num"] for m in read_metrics(run)][-1] == 50  # it stopped at the save it could not make
    checkpoint.load_checkpoint(run / "best.pt")  # written whole at iter 50 before ckpt.pt failed


RUN_FILES = ["best.pt", "metrics.jsonl", "config.json", "run.json", "summary.json"]


@pytest.mark.parametrize("name", RUN_FILES)
def test_each_file_of_a_run_that_cannot_be_written_is_one_line(name, tiny_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    fail_writes_of(monkeypatch, name, after=10)
    line = one_line(capsys, train.main, tiny_train_args(tiny_data, out, max_iters=20))
    assert f"could not write {out / name}: No space left on device" in line and no_temp_files(out)
    saved = "ckpt.pt holds iter" in line
    assert saved == (out / "ckpt.pt").is_file()  # what it says is kept is what is there
    assert line.endswith("--init_from=resume" if saved else "then run the same command again")


def test_prepared_token_files_that_cannot_be_written_leave_the_old_ones(tiny_data, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    for name in ("train.bin", "val.bin", "meta.json"):
        fail_writes_of(monkeypatch, name, after=100)
        line = one_line(capsys, prepare_shakespeare.main, [f"--input={tiny_data / 'tiny.txt'}", f"--data_dir={data}"])
        assert f"could not write {data / name}: No space left on device" in line
        assert f"the previous {name} is untouched" in line and no_temp_files(data)
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before


def test_pictures_reports_and_benchmarks_that_cannot_be_written(tiny_run, tiny_data, tmp_path, monkeypatch, capsys):
    cases = [  # (the file, the command that writes it)
        ("curves.png", plot.main, [str(tiny_run), f"--output={tmp_path / 'curves.png'}"]),
        ("report.md", compare.main, [str(tiny_run), str(tiny_run), f"--output={tmp_path}", "--max_new_tokens=5"]),
        ("attention.png", explain.main, [f"--out_dir={tiny_run}", f"--output={tmp_path}", "--start=ROMEO:"]),
        ("explain.md", explain.main, [f"--out_dir={tiny_run}", f"--output={tmp_path}", "--start=ROMEO:"]),
        ("bench.md", bench.main, [tiny_config(tmp_path, tiny_data), "--iters=1", "--warmup=0", "--repeats=1",
                                  f"--output={tmp_path / 'bench.md'}"]),
    ]
    for name, main, argv in cases:
        (tmp_path / name).write_text("the previous one")
        fail_writes_of(monkeypatch, name)
        line = one_line(capsys, main, argv)
        assert f"could not write {tmp_path / name}: No space left on device" in line, line
        assert (tmp_path / name).read_text() == "the previous one" and no_temp_files(tmp_path)


def test_a_leaderboard_that_cannot_be_written_is_one_line(tiny_data, tmp_path, monkeypatch, capsys):
    config = tmp_path / "tiny.py"
    config.write_text(f"data_dir = {str(tiny_data)!r}\ndevice = 'cpu'\ncompile = False\nn_layer = 1\nn_head = 2\n"
                      "n_embd = 32\nblock_size = 16\nbatch_size = 8\neval_iters = 2\nmax_iters = 10\n"
                      "eval_interval = 10\nwarmup_iters = 5\n")
    monkeypatch.chdir(tmp_path)
    fail_writes_of(monkeypatch, "leaderboard.md")
    line = one_line(capsys, tune.main, [str(config), "learning_rate=1e-3", "--name=full"])
    assert f"could not write {Path('out/tune-full/leaderboard.md')}: No space left on device" in line
    assert no_temp_files(tmp_path / "out")


def test_an_export_that_cannot_be_written_leaves_the_folder_as_it_was(tiny_run, tmp_path, monkeypatch, capsys):
    transformers = pytest.importorskip("transformers")
    import export
    output = tmp_path / "exported"
    export.main([f"--out_dir={tiny_run}", f"--output={output}"])
    before = {p.name: p.read_bytes() for p in output.iterdir()}

    def full_disk(self, folder, *args, **kwargs):  # part of a file, then a full disk
        (Path(folder) / "model.safetensors").write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(folder) / "model.safetensors"))
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", full_disk)
    line = one_line(capsys, export.main, [f"--out_dir={tiny_run}", f"--output={output}"])
    assert f"could not write {output}" in line and "No space left on device" in line
    assert "the previous exported is untouched" in line
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # no temp folder left beside it


def test_a_run_without_room_for_its_checkpoints_does_not_start(tiny_run, tiny_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)  # a previous run, which a new one would move aside
    before = sorted(p.name for p in tmp_path.iterdir()), (out / "metrics.jsonl").read_bytes()
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    line = one_line(capsys, train.main, tiny_train_args(tiny_data, out))
    assert f"out_dir '{out}' has 0.0 MB free, and this run's checkpoints need about 0.3 MB" in line
    assert (sorted(p.name for p in tmp_path.iterdir()), (out / "metrics.jsonl").read_bytes()) == before


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MB file system (tmpfs), where the machine lets the test mount one (root, in a sandbox that allows
    it); the test is skipped elsewhere."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a small file system here (needs root and a sandbox that allows mount)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_real_disk_that_fills_up_during_a_run(small_disk, tiny_data, capsys):
    out = small_disk / "run"
    # Room for the check (4 x the weights) and the first saves, but not for a second ckpt.pt beside the first.
    (small_disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 420_000))
    line = one_line(capsys, train.main, tiny_train_args(tiny_data, out, max_iters=40))
    assert "could not write" in line and "No space left on device" in line and no_temp_files(small_disk)
    for name in ("ckpt.pt", "best.pt"):
        if (out / name).exists():
            assert f"{name} holds iter" in line
            torch.load(out / name, weights_only=True)  # whole
