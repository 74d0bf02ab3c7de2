"""Text of any size: prepare reads and encodes in chunks (the same ids as encoding the whole text), ids past 65,536
characters are stored wider, training reads the files through a memory map, start-up checks of large files read a
few spread blocks, and evaluation reads at most eval_tokens, in fixed windows the same for every evaluation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
import evaluate
import prepare_shakespeare
import train
from conftest import SHAKESPEARE, build_vocab, evaluate_on, tiny_train_args
from configurator import UsageError
from data import decode, encode, load_data
from evaluate import eval_token_count, window_starts
from model import GPT, GPTConfig


def prepare(text_bytes: bytes, tmp_path, **options) -> dict:
    source = tmp_path / "text.txt"
    source.write_bytes(text_bytes)
    args = [f"--input={source}", f"--data_dir={tmp_path / 'data'}"] + [f"--{k}={v}" for k, v in options.items()]
    return prepare_shakespeare.main(args)


@pytest.mark.parametrize("chunk_bytes", [1, 3, 7, 1 << 16])
def test_chunked_encoding_equals_encoding_the_whole_text(tmp_path, chunk_bytes, monkeypatch):
    # multi-byte characters and \r\n split across chunk boundaries; newlines read as Python reads a text file
    text_bytes = ("héllo\r\nwörld ✓\rend\r\n" * 7 + "日本語\n").encode("utf-8")
    monkeypatch.setattr(data, "CHUNK_BYTES", chunk_bytes)
    meta = prepare(text_bytes, tmp_path, val_fraction=0.25)
    text = (tmp_path / "text.txt").read_text(encoding="utf-8")  # universal newlines, as before chunking
    vocab = build_vocab(text)
    ids = np.array(encode(text, vocab), dtype=np.uint16)
    n_train = int(len(ids) * 0.75)
    assert meta["vocab"] == vocab and meta["dtype"] == "uint16"
    assert np.array_equal(np.fromfile(tmp_path / "data" / "train.bin", dtype=np.uint16), ids[:n_train])
    assert np.array_equal(np.fromfile(tmp_path / "data" / "val.bin", dtype=np.uint16), ids[n_train:])


def test_a_vocabulary_past_65536_characters_is_stored_as_uint32_and_trains(tmp_path):
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 20_000)] + [chr(c) for c in range(0x20000, 0x20000 + 50_000)]
    text = "".join(chars) + "".join(reversed(chars))
    meta = prepare(text.encode("utf-8"), tmp_path, val_fraction=0.5)
    assert meta["vocab_size"] == 70_000 and meta["dtype"] == "uint32"
    vocab, train_ids, val_ids, _ = load_data(tmp_path / "data", "cpu", 16)
    assert decode(train_ids.tolist(), vocab) + decode(val_ids.tolist(), vocab) == text
    summary = train.main(tiny_train_args(tmp_path / "data", tmp_path / "run", n_embd=8, n_head=1, max_iters=2,
                                         eval_interval=2, eval_tokens=64))
    assert summary["status"] == "finished"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's list of this process's mappings")
def test_training_reads_the_token_files_through_a_memory_map(tiny_data):
    _, train_ids, val_ids, info = load_data(tiny_data, "cpu", 16)
    maps = Path("/proc/self/maps").read_text().splitlines()
    for split, tensor in (("train", train_ids), ("val", val_ids)):
        on_disk = np.fromfile(tiny_data / f"{split}.bin", dtype=np.uint16)
        assert torch.equal(tensor.long(), torch.from_numpy(on_disk.astype(np.int64)))
        assert info[f"{split}_sha256"] == json.loads((tiny_data / "meta.json").read_text())[f"{split}_sha256"]
        # the tensor's memory is a mapping of the file itself, not a copy read into memory
        mapped = [line.split()[0].split("-") for line in maps if line.endswith(f"{split}.bin")]
        assert any(int(lo, 16) <= tensor.data_ptr() < int(hi, 16) for lo, hi in mapped)


def test_a_large_file_is_checked_at_start_by_spread_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SPOT_BLOCK_BYTES", 1024)  # 64 blocks of 1 KiB: a sixteenth of Tiny Shakespeare
    prepare(SHAKESPEARE.read_bytes(), tmp_path)
    monkeypatch.setattr(data, "FULL_CHECK_BYTES", 1000)  # every split now counts as large
    read = []
    monkeypatch.setattr(data.Path, "read_bytes", lambda self: read.append(self) or b"")
    assert load_data(tmp_path / "data", "cpu", 16)[3]["train_sha256"] == \
        json.loads((tmp_path / "data" / "meta.json").read_text())["train_sha256"]
    assert not read  # no file was read whole: its sha256 is the one prepare recorded
    monkeypatch.undo()
    monkeypatch.setattr(data, "SPOT_BLOCK_BYTES", 1024)
    monkeypatch.setattr(data, "FULL_CHECK_BYTES", 1000)
    path = tmp_path / "data" / "train.bin"
    damaged = bytearray(path.read_bytes())
    damaged[(len(damaged) - 1024) * 31 // 63 + 5] ^= 1  # a byte inside the 32nd of the spread blocks
    path.write_bytes(bytes(damaged))
    with pytest.raises(UsageError, match="train.bin is corrupt"):
        load_data(tmp_path / "data", "cpu", 16)


def test_the_whole_split_is_read_when_it_is_small_and_a_capped_fixed_sample_when_large():
    assert window_starts(111_540, 256, 120_000) is None and eval_token_count(111_540, 256, 120_000) == 111_540
    assert window_starts(10_000_000, 256, 0) is None  # 0: always the whole split
    starts = window_starts(10_000_000, 256, 120_000)
    assert len(starts) == 120_000 // 256 and eval_token_count(10_000_000, 256, 120_000) == len(starts) * 256 <= 120_000
    assert starts[0] == 0 and starts[-1] == 10_000_000 - 256  # from the first target to the last
    gaps = np.diff(starts)
    assert gaps.min() >= 256 and gaps.max() - gaps.min() <= 1  # evenly spread, never overlapping
    ids = torch.arange(10_001)
    windows = evaluate.split_windows(ids, 16, 4, max_tokens=160)
    x = torch.cat([x for x, _ in windows])
    y = torch.cat([y for _, y in windows])
    assert x.shape == (10, 16) and torch.equal(y, x + 1) and x[0, 0] == 0 and x[-1, -1] == 9_999


def test_every_evaluation_of_every_run_and_resume_reads_the_same_windows(tiny_data, tmp_path, monkeypatch):
    seen = []
    real = evaluate.split_windows
    monkeypatch.setattr(evaluate, "split_windows",
                        lambda split, *a: seen.append((len(split), [x.clone() for x, _ in real(split, *a)])) or
                        real(split, *a))
    args = dict(max_iters=20, lr_decay_iters=20, eval_interval=10, eval_tokens=100, eval_iters=1)
    train.main(tiny_train_args(tiny_data, tmp_path / "a", seed=1, **args))
    train.main(tiny_train_args(tiny_data, tmp_path / "b", seed=2, **args | {"max_iters": 10}))
    train.main(tiny_train_args(tiny_data, tmp_path / "b", seed=2, init_from="resume", **args))
    for split_size in {size for size, _ in seen}:
        reads = [windows for size, windows in seen if size == split_size]
        assert len(reads) == 6  # run a: iters 0, 10, 20; run b: 0, 10, then 20 after the resume
        assert all(len(w) == len(reads[0]) and all(map(torch.equal, w, reads[0])) for w in reads)
        assert sum(len(x) * x.size(1) for x in reads[0]) <= 100
    metrics = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert {m["val_loss_tokens"] for m in metrics} == {m["train_loss_tokens"] for m in metrics} == {96}  # 6 x 16
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["val_loss_tokens"] == 96


def test_a_pytorch_that_cannot_index_unsigned_tensors_reads_the_same_ids(tiny_data, monkeypatch):
    """PyTorch before 2.5 cannot index uint16 tensors: the same bytes are read as int16 (ids below 32,768), and the
    batches are the same."""
    _, expected, _, _ = load_data(tiny_data, "cpu", 16)
    monkeypatch.setattr(data, "indexable", lambda dtype: False)
    _, got, _, _ = load_data(tiny_data, "cpu", 16)
    assert got.dtype == torch.int16
    batch = [train.get_batch(ids, 16, 4, torch.Generator().manual_seed(0), "cpu") for ids in (expected, got)]
    assert all(torch.equal(a, b) for a, b in zip(*batch))


def test_evaluation_batches_have_one_shape_and_the_loss_of_each_window_alone():
    """The split's last windows share one batch filled out with ignored targets, so that a compiled model sees one
    shape; the loss is still the mean over exactly the split's targets, each window as if evaluated alone."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)).eval()
    ids = torch.randint(11, (16 * 9 + 6,))  # 9 whole windows of 16 targets, then a last one of 5
    batches = list(evaluate.eval_batches(ids, 16, 4, 0, torch.device("cpu")))
    assert [tuple(x.shape) for x, _, _ in batches] == [(4, 16)] * 3 and [n for *_, n in batches] == [64, 64, 21]
    with torch.no_grad():
        windows = [(ids[i:min(i + 16, len(ids) - 1)], ids[i + 1:i + 17]) for i in range(0, len(ids) - 1, 16)]
        expected = [F.cross_entropy(model(x[None])[0][0], y, reduction="sum") for x, y in windows]  # the last: 5
    got = evaluate_on(model, ids, block_size=16, batch_size=4, max_tokens=0)
    assert got["val_loss_tokens"] == len(ids) - 1 == int(got["val_counts"][evaluate.TARGETS].sum())
    assert got["val_loss"] == pytest.approx(sum(expected).item() / (len(ids) - 1), rel=1e-5)
