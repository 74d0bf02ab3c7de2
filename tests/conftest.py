"""Shared fixtures: a tiny prepared dataset and a tiny trained run, built once per test session (seconds on a CPU);
and waiting for a child process to reach a point, without racing the clock."""

import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import prepare_shakespeare  # noqa: E402
import train  # noqa: E402

SHAKESPEARE = REPO / "data" / "shakespeare_char" / "input.txt"
# Not a deadline that a loaded machine could miss: the bound at which a child that neither ends nor gets on is hung.
HUNG_S = 900


def wait_until(reached, proc, what: str) -> None:
    """Wait, polling, until reached() is true; fail with `what` and the child's stderr if it ends first. How long
    it takes does not matter (a loaded machine may start a process slowly): only a child hung for HUNG_S fails."""
    started = time.monotonic()
    while not reached():
        if proc.poll() is not None:
            stderr = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"{what}: the process ended first (exit status {proc.returncode}): {stderr}")
        assert time.monotonic() - started < HUNG_S, f"{what}: the process is hung"
        time.sleep(0.02)


def tiny_train_args(data_dir, out_dir, **overrides):
    """A model and schedule small enough to train in a second or two on one CPU core."""
    settings = dict(device="cpu", compile="false", data_dir=data_dir, out_dir=out_dir, n_layer=1, n_head=2,
                    n_embd=32, block_size=16, batch_size=8, max_iters=40, eval_interval=10, eval_iters=2,
                    log_interval=5, dropout=0.1, warmup_iters=5, learning_rate=3e-3, min_lr=3e-4)
    settings.update(overrides)
    return [f"--{k}={v}" for k, v in settings.items()]


def evaluate_on(model, ids, block_size: int, batch_size: int = 8, max_tokens: int = 120_000) -> dict:
    """train.py's evaluation of model over ids, read as a val split: val_loss, val_loss_tokens and val_counts."""
    cfg = train.TrainConfig(block_size=block_size, batch_size=batch_size)
    return train.estimate_loss(model, {"val": (ids, max_tokens)}, cfg, nullcontext())


def build_vocab(text: str) -> list[str]:
    """The vocabulary prepare_shakespeare.py writes for text: its distinct characters, sorted by code point."""
    return sorted(set(text))


class RunsCodeWhenUnpickled:
    """Pickled inside a file, it creates `marker` if anything ever unpickles it: proof that code ran on load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The first 20,000 characters of Tiny Shakespeare, prepared like the real thing."""
    root = tmp_path_factory.mktemp("tiny_data")
    text_file = root / "tiny.txt"
    text_file.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    prepare_shakespeare.main([f"--input={text_file}", f"--data_dir={root}"])
    return root


@pytest.fixture(scope="session")
def tiny_bpe_data(tmp_path_factory, tiny_data) -> Path:
    """The same 20,000 characters as BPE tokens: a byte-level BPE of 300 tokens (the 256 bytes and 44 merges)."""
    root = tmp_path_factory.mktemp("tiny_bpe_data")
    prepare_shakespeare.main([f"--input={tiny_data / 'tiny.txt'}", f"--data_dir={root}", "--tokenizer=bpe",
                              "--vocab_size=300"])
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data) -> Path:
    out_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train.main(tiny_train_args(tiny_data, out_dir))
    return out_dir
