"""prepare_if_missing: train.py on the default data_dir prepares the shipped Tiny Shakespeare itself, once, even when
torchrun's processes all ask at the same moment. The default folder is pointed at a copy in tmp, with a part of the
text, so the repository's own data folder is never touched."""

import json
import os
import subprocess
import sys

import pytest

import prepare_shakespeare as prep
from conftest import HUNG_S, REPO, SHAKESPEARE

FILES = prep.PREPARED_FILES


@pytest.fixture
def default_dir(tmp_path, monkeypatch):
    """A stand-in for data/shakespeare_char: a folder holding only input.txt (the first 100,000 characters)."""
    folder = tmp_path / "shakespeare_char"
    folder.mkdir()
    (folder / "input.txt").write_text(SHAKESPEARE.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    monkeypatch.setattr(prep, "SHAKESPEARE_DIR", folder)
    monkeypatch.chdir(tmp_path)
    return folder


def contents(folder):
    """Every file in folder, with its bytes and modification time: what 'touches nothing' compares."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def prepared(folder) -> dict:
    return {name: (folder / name).read_bytes() for name in FILES}


def test_prepares_the_default_folder_when_missing_in_one_line(default_dir, capsys):
    assert prep.prepare_if_missing("shakespeare_char") is True
    assert capsys.readouterr().out == "preparing shakespeare_char from the shipped Tiny Shakespeare (once) ...\n"
    made = prepared(default_dir)
    for name in FILES:
        (default_dir / name).unlink()
    prep.main(["--data_dir=shakespeare_char"])  # python prepare_shakespeare.py, from the folder above it
    assert prepared(default_dir) == made


def test_already_prepared_is_left_alone_by_any_spelling_of_the_path(default_dir, capsys):
    assert prep.prepare_if_missing("shakespeare_char")
    before = contents(default_dir)
    capsys.readouterr()
    spellings = ["shakespeare_char", "shakespeare_char/", str(default_dir),
                 f"../{default_dir.parent.name}/shakespeare_char"]
    assert [prep.prepare_if_missing(spelling) for spelling in spellings] == [False] * 4
    assert contents(default_dir) == before
    assert capsys.readouterr().out == ""


def test_another_folder_is_not_prepared_or_created(default_dir, tmp_path, capsys):
    other = tmp_path / "my_text"
    assert prep.prepare_if_missing(str(other)) is False
    assert not other.exists()
    other.mkdir()
    (other / "input.txt").write_text("ROMEO:\nSoft!\n" * 100, encoding="utf-8")
    before = contents(other)
    assert prep.prepare_if_missing("my_text") is False
    assert contents(other) == before
    assert capsys.readouterr().out == ""


def test_a_bpe_folder_of_the_shipped_text_is_prepared_as_its_command_would(default_dir, capsys):
    pytest.importorskip("tokenizers")  # installed by .ci/run from requirements-extras.txt
    bpe_dir = default_dir.parent / "shakespeare_bpe300"
    assert prep.prepare_if_missing("shakespeare_bpe300") is True
    assert capsys.readouterr().out == "preparing shakespeare_bpe300 from the shipped Tiny Shakespeare (once) ...\n"
    made = prepared(bpe_dir) | {"tokenizer.json": (bpe_dir / "tokenizer.json").read_bytes()}
    assert json.loads(made["meta.json"])["vocab_size"] == 300
    assert prep.prepare_if_missing(str(bpe_dir)) is False  # once
    for name in (*FILES, "tokenizer.json"):
        (bpe_dir / name).unlink()
    prep.main(["--data_dir=shakespeare_bpe300", "--tokenizer=bpe", "--vocab_size=300"])
    assert made == prepared(bpe_dir) | {"tokenizer.json": (bpe_dir / "tokenizer.json").read_bytes()}
    assert prep.prepare_if_missing("elsewhere/shakespeare_bpe300") is False  # beside the shipped text only


@pytest.mark.parametrize("left", [("train.bin",), ("train.bin", "val.bin"), ("meta.json",)])
def test_a_partial_preparation_is_done_again(default_dir, capsys, left):
    assert prep.prepare_if_missing(str(default_dir))
    expected = prepared(default_dir)
    for name in set(FILES) - set(left):
        (default_dir / name).unlink()
    if "train.bin" in left:
        (default_dir / "train.bin").write_bytes(b"cut short")  # what is left is not trusted: it is written again
    capsys.readouterr()
    assert prep.prepare_if_missing(str(default_dir)) is True
    assert capsys.readouterr().out.startswith("preparing ")
    assert prepared(default_dir) == expected


# What each process runs: announce the moment it has found the files missing and is about to wait for the lock.
CHILD = """
import sys
from pathlib import Path
import fcntl
import prepare_shakespeare as prep
prep.SHAKESPEARE_DIR = Path(sys.argv[1])
take = fcntl.flock
def flock(fd, operation):
    print("waiting for the lock", flush=True)
    take(fd, operation)
fcntl.flock = flock
print("prepared" if prep.prepare_if_missing(sys.argv[1]) else "not prepared", flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="no flock on Windows: prepare_if_missing goes without a lock there")
def test_two_processes_at_once_prepare_once(tmp_path):
    folder = tmp_path / "shakespeare_char"
    folder.mkdir()
    (folder / "input.txt").write_text(SHAKESPEARE.read_text(encoding="utf-8")[:400_000], encoding="utf-8")
    # This test holds the lock until both processes have seen the files missing, so both must get past the lock's
    # re-check: the race torchrun's processes run, made certain.
    import fcntl
    fd = os.open(folder / prep.PREPARE_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(folder)], cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        assert [child.stdout.readline() for child in children] == ["waiting for the lock\n"] * 2
    finally:
        os.close(fd)  # releases the lock
    outputs = [child.communicate(timeout=HUNG_S) for child in children]
    assert [child.returncode for child in children] == [0, 0], [err for _, err in outputs]
    said = sorted(out.splitlines()[-1] for out, _ in outputs)
    assert said == ["not prepared", "prepared"]
    assert sum("preparing " in out for out, _ in outputs) == 1
    # The same source string as the children's, so even meta.json is byte for byte the same.
    prep.main([f"--data_dir={tmp_path / 'reference'}", f"--input={folder / 'input.txt'}"])
    assert prepared(folder) == prepared(tmp_path / "reference")
    assert json.loads((folder / "meta.json").read_text(encoding="utf-8"))["train_tokens"] == 360_000
