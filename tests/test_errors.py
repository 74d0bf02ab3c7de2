"""Every row of the table in docs/errors.md ("When something goes wrong") is a scenario here, run for real.

The table is the contract: each mistake must end with a non-zero exit, no traceback, and the message excerpt the
table shows. A row without a scenario, or a scenario without a row, fails the suite, so the table cannot drift.
"""

import importlib.util
import os
import re
import shutil
import sys
import time

import numpy as np
import pytest
import torch

import bench
import checkpoint
import compare
import explain
import export
import files
import plot
import prepare_shakespeare
import sample
import train
import tune
from conftest import REPO, RunsCodeWhenUnpickled, tiny_train_args
from test_prepare import _Server

SCENARIOS = {}  # the table's "Mistake" text -> a function that makes that mistake


def scenario(mistake):
    def register(make_mistake):
        SCENARIOS[mistake] = make_mistake
        return make_mistake
    return register


ERRORS_DOC = REPO / "docs" / "errors.md"


def table_rows() -> list[tuple[str, str, str]]:
    """(mistake, where, message excerpt) for each row of the table in docs/errors.md."""
    text = ERRORS_DOC.read_text(encoding="utf-8") if ERRORS_DOC.exists() else ""
    if "\n## When something goes wrong\n" not in text:
        return []  # test_the_table_and_the_scenarios_list_the_same_mistakes then names every missing row
    section = text.split("\n## When something goes wrong\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) == 3 and cells[0] not in ("Mistake", "") and not set(cells[0]) <= set("-: "):
            excerpt = re.fullmatch(r"`(.+)`", cells[2])
            assert excerpt, f"the message cell of row {cells[0]!r} must be one `code` excerpt: {cells[2]!r}"
            rows.append((cells[0], cells[1], excerpt.group(1).replace("\\|", "|")))
    return rows


def appears_in(excerpt: str, text: str) -> bool:
    """Whether text holds the excerpt, where '…' in the excerpt stands for any text (a path, a port, a hash)."""
    position = 0
    for part in (part.strip() for part in excerpt.split("…")):
        found = text.find(part, position)
        if found < 0:
            return False
        position = found + len(part)
    return True


class Context:
    """What a scenario needs: a scratch folder, the tiny dataset and trained run, and monkeypatch."""

    def __init__(self, tmp_path, tiny_data, tiny_run, monkeypatch):
        self.tmp, self.data, self.run, self.monkeypatch = tmp_path, tiny_data, tiny_run, monkeypatch

    def train(self, data_dir=None, out_dir=None, **overrides):
        train.main(tiny_train_args(data_dir or self.data, out_dir or self.tmp / "out", **overrides))

    def data_copy(self):
        copy = self.tmp / "data"
        shutil.copytree(self.data, copy)
        return copy

    def run_copy(self):
        copy = self.tmp / "run"
        shutil.copytree(self.run, copy)
        return copy

    def resume(self, data_dir=None, **overrides):
        self.train(data_dir, self.run_copy(), init_from="resume", max_iters=60, **overrides)

    def write_config(self, text):
        path = self.tmp / "my_config.py"
        path.write_text(text, encoding="utf-8")
        return path


# ----------------------------------------------------------------------------------------------------------------------
# train.py: settings

@scenario("Misspelled setting")
def _(ctx):
    ctx.train(n_layers=2)


@scenario("Setting given without a value")
def _(ctx):
    train.main(tiny_train_args(ctx.data, ctx.tmp / "out") + ["--max_iters"])


@scenario("Value of the wrong type")
def _(ctx):
    ctx.train(max_iters="lots")


@scenario("Value of the wrong type in a config file")
def _(ctx):
    train.main([str(ctx.write_config('n_layer = "4"\n'))] + tiny_train_args(ctx.data, ctx.tmp / "out"))


@scenario("Zero or negative size")
def _(ctx):
    ctx.train(n_layer=0)


@scenario("Dropout outside [0, 1)")
def _(ctx):
    ctx.train(dropout=1.0)


@scenario("Learning rate <= 0")
def _(ctx):
    ctx.train(learning_rate=0)


@scenario("A negative target")
def _(ctx):
    ctx.train(target_loss=-1)


@scenario("A time budget shorter than one step")
def _(ctx):
    ctx.train(max_time=1e-9)  # every step takes longer than a nanosecond


@scenario("Seeds for a benchmark that takes none")
def _(ctx):
    bench.main(["config/cpu.py", "--seeds=1,2,3"])


@scenario("Nesterov momentum without momentum")
def _(ctx):
    ctx.train(optimizer="sgd", momentum=0)


@scenario("A compile mode without compiling")
def _(ctx):
    ctx.train(compile_mode="reduce-overhead")


@scenario("`block_size` longer than the val split")
def _(ctx):
    ctx.train(block_size=4096)


@scenario("`n_embd` not divisible by `n_head`")
def _(ctx):
    ctx.train(n_embd=30, n_head=4)


@scenario("Config file that does not exist")
def _(ctx):
    train.main(["nope.py"])


@scenario("Config file that does not parse")
def _(ctx):
    train.main([str(ctx.write_config("n_layer = = 4\n"))])


@scenario("`device=cuda` without a CUDA GPU")
def _(ctx):
    ctx.monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ctx.train(device="cuda")


@scenario("`device=mps` without Apple silicon")
def _(ctx):
    ctx.monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    ctx.train(device="mps")


@scenario("A dtype the device cannot do")
def _(ctx):
    ctx.train(dtype="float16")  # tiny_train_args runs on the CPU


@scenario("`gradient_accumulation_steps` not divisible by the number of processes")
def _(ctx):
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2")):  # as torchrun starts rank 0 of 2
        ctx.monkeypatch.setenv(name, value)
    ctx.train(gradient_accumulation_steps=3)  # refused before the process would wait for rank 1


# ----------------------------------------------------------------------------------------------------------------------
# train.py: data and out_dir

@scenario("No `train.bin`/`val.bin`")
def _(ctx):
    ctx.train(data_dir=ctx.tmp / "empty")


@scenario("Truncated `.bin` file")
def _(ctx):
    data = ctx.data_copy()
    (data / "val.bin").write_bytes((data / "val.bin").read_bytes()[:-3])
    ctx.train(data_dir=data)


@scenario("Corrupt `.bin` file")
def _(ctx):
    data = ctx.data_copy()
    ids = np.fromfile(data / "train.bin", dtype=np.uint16)
    ids[100:110] = 7  # the same length, other bytes
    ids.tofile(data / "train.bin")
    ctx.train(data_dir=data)


@scenario("Corrupt `meta.json`")
def _(ctx):
    data = ctx.data_copy()
    (data / "meta.json").write_text('{"vocab_size": 65', encoding="utf-8")
    ctx.train(data_dir=data)


@scenario("`out_dir` is a file")
def _(ctx):
    (ctx.tmp / "a_file").write_text("not a folder")
    ctx.train(out_dir=ctx.tmp / "a_file")


@scenario("`out_dir` not writable")
def _(ctx):
    locked = ctx.tmp / "locked"
    locked.mkdir(mode=0o555)
    if os.geteuid() != 0:
        ctx.train(out_dir=locked / "run")
        return
    # Root may write anywhere, so the mistake is made by a child process that has given up root.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        sys.stderr = os.fdopen(write_end, "w", encoding="utf-8")  # capsys has replaced sys.stderr in this process
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            ctx.train(out_dir=locked / "run")
        except SystemExit as e:
            code = e.code
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, encoding="utf-8") as child_stderr:
        sys.stderr.write(child_stderr.read())
    _, status = os.waitpid(pid, 0)
    raise SystemExit(os.waitstatus_to_exitcode(status))


# ----------------------------------------------------------------------------------------------------------------------
# train.py: resuming and checkpoints

@scenario("A second run on a folder in use")
def _(ctx):
    with files.lock_folder(ctx.tmp / "out"):
        ctx.train()


@scenario("Resume without a checkpoint")
def _(ctx):
    ctx.train(init_from="resume")


@scenario("Resume with another model shape")
def _(ctx):
    ctx.resume(n_embd=64)


@scenario("Resume with another optimizer")
def _(ctx):
    ctx.resume(optimizer="sgd")


@scenario("Resume with another vocabulary")
def _(ctx):
    other = ctx.tmp / "other_vocab"
    text = ctx.tmp / "other.txt"
    text.write_text((ctx.data / "tiny.txt").read_text(encoding="utf-8").upper(), encoding="utf-8")
    prepare_shakespeare.main([f"--input={text}", f"--data_dir={other}"])
    ctx.resume(data_dir=other)


@scenario("Resume on other data")
def _(ctx):
    other = ctx.tmp / "other_data"
    prepare_shakespeare.main([f"--input={ctx.data / 'tiny.txt'}", f"--data_dir={other}", "--val_fraction=0.2"])
    ctx.resume(data_dir=other)


@scenario("Truncated checkpoint")
def _(ctx):
    run = ctx.run_copy()
    (run / "ckpt.pt").write_bytes((run / "ckpt.pt").read_bytes()[:5000])
    ctx.train(out_dir=run, init_from="resume", max_iters=60)


@scenario("Checkpoint from an unknown format version")
def _(ctx):
    run = ctx.run_copy()
    ckpt = checkpoint.load_checkpoint(run / "ckpt.pt")
    ckpt["format_version"] = 99
    torch.save(ckpt, run / "ckpt.pt")
    ctx.train(out_dir=run, init_from="resume", max_iters=60)


@scenario("Checkpoint crafted to run code")
def _(ctx):
    run = ctx.run_copy()
    marker = ctx.tmp / "code_ran"
    torch.save({"format_version": 1, "model": RunsCodeWhenUnpickled(marker)}, run / "ckpt.pt")
    try:
        ctx.train(out_dir=run, init_from="resume", max_iters=60)
    finally:
        assert not marker.exists(), "loading the checkpoint ran its code"


@scenario("Disk full while saving")
def _(ctx):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full to simulate a full disk")
    run = ctx.run_copy()
    (run / "ckpt.pt.tmp").symlink_to("/dev/full")  # every write to the temp file fails with ENOSPC
    ctx.train(out_dir=run, init_from="resume", max_iters=60)


@scenario("Too little disk space for a run's checkpoints")
def _(ctx):
    ctx.monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    ctx.train()


@scenario("Loss becomes NaN or inf")
def _(ctx):
    ctx.train(learning_rate=1e9, min_lr=1e9, warmup_iters=0)


# ----------------------------------------------------------------------------------------------------------------------
# train.py: starting from a trained run

@scenario("Starting from a folder that is not a run")
def _(ctx):
    ctx.train(init_from=ctx.tmp / "no_such_run")


@scenario("Starting from a run without a checkpoint")
def _(ctx):
    (ctx.tmp / "empty_run").mkdir()
    ctx.train(init_from=ctx.tmp / "empty_run")


@scenario("Starting a run in the folder of the run it starts from")
def _(ctx):
    run = ctx.run_copy()
    ctx.train(out_dir=run, init_from=run)


@scenario("Starting from a run with a key that changes the model's shape")
def _(ctx):
    ctx.train(init_from=ctx.run, n_embd=64)


@scenario("Freezing layers of a run from scratch")
def _(ctx):
    ctx.train(freeze_layers=1)


@scenario("Freezing more layers than the model has")
def _(ctx):
    ctx.train(init_from=ctx.run, freeze_layers=3)


@scenario("Freezing the embedding of new characters")
def _(ctx):
    text = ctx.tmp / "new.txt"
    text.write_text((ctx.data / "tiny.txt").read_text(encoding="utf-8") + "✓\n", encoding="utf-8")
    prepare_shakespeare.main([f"--input={text}", f"--data_dir={ctx.tmp / 'new'}"])
    ctx.train(data_dir=ctx.tmp / "new", init_from=ctx.run, freeze_layers=1)


def bpe_data(ctx):
    """The tiny text as BPE tokens, in ctx.tmp/bpe."""
    prepare_shakespeare.main([f"--input={ctx.data / 'tiny.txt'}", f"--data_dir={ctx.tmp / 'bpe'}", "--tokenizer=bpe",
                              "--vocab_size=300"])
    return ctx.tmp / "bpe"


@scenario("Fine-tuning a model on data of another tokenizer")
def _(ctx):
    ctx.train(data_dir=bpe_data(ctx), init_from=ctx.run)


@scenario("A BPE dataset without its tokenizer")
def _(ctx):
    data_dir = bpe_data(ctx)
    (data_dir / "tokenizer.json").unlink()
    ctx.train(data_dir=data_dir)


@scenario("A vocabulary size for character tokens")
def _(ctx):
    prepare_shakespeare.main([f"--input={ctx.data / 'tiny.txt'}", f"--data_dir={ctx.tmp / 'd'}", "--vocab_size=512"])


@scenario("A BPE vocabulary smaller than the bytes")
def _(ctx):
    prepare_shakespeare.main([f"--input={ctx.data / 'tiny.txt'}", f"--data_dir={ctx.tmp / 'd'}", "--tokenizer=bpe",
                              "--vocab_size=100"])


@scenario("BPE tokens without the tokenizers package")
def _(ctx):
    ctx.monkeypatch.setitem(sys.modules, "tokenizers", None)  # as where it is not installed
    prepare_shakespeare.main([f"--input={ctx.data / 'tiny.txt'}", f"--data_dir={ctx.tmp / 'd'}", "--tokenizer=bpe"])


@scenario("Explaining a model on data of another tokenizer")
def _(ctx):
    explain.main([f"--out_dir={ctx.run}", f"--data_dir={bpe_data(ctx)}"])


@scenario("Resume with other frozen layers")
def _(ctx):
    ctx.resume(freeze_layers=1)


# ----------------------------------------------------------------------------------------------------------------------
# sample.py

@scenario("Sampling from a run folder that does not exist")
def _(ctx):
    sample.main([f"--out_dir={ctx.tmp / 'no_such_run'}"])


@scenario("Sampling with no runs under `out/`")
def _(ctx):
    ctx.monkeypatch.chdir(ctx.tmp)
    sample.main([])


@scenario("Sampling from a folder without a checkpoint")
def _(ctx):
    (ctx.tmp / "empty_run").mkdir()
    sample.main([f"--out_dir={ctx.tmp / 'empty_run'}"])


@scenario("Prompt characters outside the vocabulary")
def _(ctx):
    sample.main([f"--out_dir={ctx.run}", "--start=Zoë ✓", "--device=cpu"])


@scenario("Explaining a model on data with characters it never saw")
def _(ctx):
    text = ctx.tmp / "new.txt"
    text.write_text((ctx.data / "tiny.txt").read_text(encoding="utf-8") + "✓\n", encoding="utf-8")
    prepare_shakespeare.main([f"--input={text}", f"--data_dir={ctx.tmp / 'new'}"])
    explain.main([f"--out_dir={ctx.run}", f"--data_dir={ctx.tmp / 'new'}", "--device=cpu"])


@scenario("A negative sample length")
def _(ctx):
    ctx.train(eval_sample_chars=-1)


@scenario("`max_new_tokens` <= 0")
def _(ctx):
    sample.main([f"--out_dir={ctx.run}", "--max_new_tokens=0"])


@scenario("`temperature` <= 0")
def _(ctx):
    sample.main([f"--out_dir={ctx.run}", "--temperature=0"])


@scenario("`top_k` < 0")
def _(ctx):
    sample.main([f"--out_dir={ctx.run}", "--top_k=-1"])


@scenario("`top_k` above the vocabulary size")
def _(ctx):
    sample.main([f"--out_dir={ctx.run}", "--top_k=1000", "--device=cpu"])


@scenario("Prompt file not found")
def _(ctx):
    sample.main([f"--out_dir={ctx.run}", f"--start=FILE:{ctx.tmp / 'prompt.txt'}", "--device=cpu"])


# ----------------------------------------------------------------------------------------------------------------------
# prepare_shakespeare.py

@scenario("Empty input text")
def _(ctx):
    (ctx.tmp / "empty.txt").write_bytes(b"")
    prepare_shakespeare.main([f"--input={ctx.tmp / 'empty.txt'}", f"--data_dir={ctx.tmp / 'data'}"])


@scenario("Input text not UTF-8")
def _(ctx):
    (ctx.tmp / "latin1.txt").write_bytes("Roméo\n".encode("latin-1"))
    prepare_shakespeare.main([f"--input={ctx.tmp / 'latin1.txt'}", f"--data_dir={ctx.tmp / 'data'}"])


@scenario("Input text not found")
def _(ctx):
    prepare_shakespeare.main([f"--input={ctx.tmp / 'missing.txt'}", f"--data_dir={ctx.tmp / 'data'}"])


@scenario("A speaker who never speaks in the text")
def _(ctx):
    prepare_shakespeare.main([f"--input={ctx.data / 'tiny.txt'}", f"--data_dir={ctx.tmp / 'data'}",
                              "--keep_speakers=ROMIO"])


@scenario("Keeping and dropping speakers at once")
def _(ctx):
    prepare_shakespeare.main([f"--input={ctx.data / 'tiny.txt'}", f"--data_dir={ctx.tmp / 'data'}",
                              "--keep_speakers=MENENIUS", "--drop_speakers=All"])


@scenario("No network for the download")
def _(ctx):
    ctx.monkeypatch.setattr(time, "sleep", lambda seconds: None)  # skip the waits between retries
    with _Server(b"") as server:
        dead_url = server.url  # nothing listens there once the server has shut down
    prepare_shakespeare.main([f"--url={dead_url}", f"--data_dir={ctx.tmp / 'data'}"])


@scenario("Download with the wrong checksum")
def _(ctx):
    ctx.monkeypatch.setattr(time, "sleep", lambda seconds: None)
    with _Server(b"not Shakespeare\n" * 100) as server:
        prepare_shakespeare.main([f"--url={server.url}", f"--data_dir={ctx.tmp / 'data'}"])


# ----------------------------------------------------------------------------------------------------------------------
# plot.py, compare.py, tune.py

@scenario("Plotting a run folder that does not exist")
def _(ctx):
    plot.main([str(ctx.tmp / "no_such_run")])


@scenario("Plotting a folder without `metrics.jsonl`")
def _(ctx):
    (ctx.tmp / "not_a_run").mkdir()
    plot.main([str(ctx.tmp / "not_a_run")])


@scenario("Comparing a single run")
def _(ctx):
    compare.main([str(ctx.run)])


@scenario("A tracker switched on without its package")
def _(ctx):
    real_find_spec = importlib.util.find_spec
    ctx.monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb"
                            else real_find_spec(name, *a))
    ctx.train(wandb_log=True)


@scenario("Exporting a shape no stock architecture computes")
def _(ctx):
    ctx.train(position_encoding="sinusoidal", max_iters=1, eval_interval=1)
    export.main([f"--out_dir={ctx.tmp / 'out'}", f"--output={ctx.tmp / 'exported'}"])


@scenario("Exporting without transformers installed")
def _(ctx):
    ctx.monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers then raises ImportError
    export.main([f"--out_dir={ctx.run}", f"--output={ctx.tmp / 'exported'}"])


@scenario("Misspelled key in a grid search")
def _(ctx):
    tune.main(["config/cpu.py", "n_layers=1,2"])


# ----------------------------------------------------------------------------------------------------------------------

def test_the_table_and_the_scenarios_list_the_same_mistakes():
    in_table = [row[0] for row in table_rows()]
    assert len(in_table) == len(set(in_table)), "a mistake is listed twice in the table of docs/errors.md"
    assert set(in_table) - set(SCENARIOS) == set(), "docs/errors.md rows without a scenario in tests/test_errors.py"
    assert set(SCENARIOS) - set(in_table) == set(), "scenarios without a row in the table of docs/errors.md"


@pytest.mark.parametrize("mistake, where, excerpt", table_rows(), ids=[row[0] for row in table_rows()])
def test_each_mistake_ends_with_its_message(mistake, where, excerpt, tmp_path, tiny_data, tiny_run, monkeypatch,
                                            capsys):
    if mistake not in SCENARIOS:
        pytest.fail(f"no scenario for the row {mistake!r} of docs/errors.md")
    with pytest.raises(SystemExit) as exc:
        SCENARIOS[mistake](Context(tmp_path, tiny_data, tiny_run, monkeypatch))
    err = capsys.readouterr().err
    assert exc.value.code not in (0, None), f"{mistake}: exit status {exc.value.code}"
    assert "Traceback" not in err
    assert appears_in(excerpt, " ".join(err.split())), f"{mistake}: expected {excerpt!r} in stderr:\n{err}"
