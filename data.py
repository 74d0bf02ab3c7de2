"""The prepared dataset: characters to ids and back, and the files train.bin, val.bin and meta.json, written here for
prepare_shakespeare.py and read here for train.py and bench.py.

    train.bin, val.bin  raw uint16 token ids (the first and last part of the text), readable with np.memmap
    meta.json           the vocabulary (id -> character), and each split's token count and sha256
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from configurator import UsageError
from files import read_json, write_atomic

META_FORMAT_VERSION = 1
NOT_PREPARED = "run prepare_shakespeare.py first (or point --data_dir at prepared data)"


# ----------------------------------------------------------------------------------------------------------------------
# The vocabulary: every distinct character of the text, sorted, so the same text always gives the same ids.

def build_vocab(text: str) -> list[str]:
    return sorted(set(text))


def encode(text: str, vocab: list[str]) -> list[int]:
    """Ids of text's characters; characters outside the vocabulary are refused, every one of them named."""
    stoi = {ch: i for i, ch in enumerate(vocab)}
    unknown = sorted({ch for ch in text if ch not in stoi})
    if unknown:
        raise UsageError(f"the prompt has characters the model never saw: {' '.join(repr(c) for c in unknown)}; "
                         "remove or replace them")
    return [stoi[ch] for ch in text]


def decode(ids, vocab: list[str]) -> str:
    return "".join(vocab[i] for i in ids)


REMAP_CHUNK = 1 << 22  # ids mapped at a time: a split is never copied to int64 all at once


def remap_ids(ids: torch.Tensor, data_vocab: list[str], model_vocab: list[str]) -> torch.Tensor:
    """The ids of a split (encoded with data_vocab) as the ids of the same characters in model_vocab, which holds every
    one of them: a run from a trained model keeps that model's ids. Any integer dtype in, the same dtype out where
    model_vocab's ids fit in it (else int64); ids unchanged, not copied, where the two vocabularies are the same."""
    if data_vocab == model_vocab:
        return ids
    stoi = {ch: i for i, ch in enumerate(model_vocab)}
    dtype = ids.dtype if len(model_vocab) - 1 <= torch.iinfo(ids.dtype).max else torch.int64
    table = torch.tensor([stoi[ch] for ch in data_vocab], dtype=dtype, device=ids.device)  # data id -> model id
    out = torch.empty(len(ids), dtype=dtype, device=ids.device)
    for start in range(0, len(ids), REMAP_CHUNK):
        # Indexing needs int64 indices; uint16 and uint32 splits are widened one chunk at a time.
        out[start:start + REMAP_CHUNK] = table[ids[start:start + REMAP_CHUNK].to(torch.int64)]
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Writing

def write_dataset(text: str, data_dir: Path, val_fraction: float, source: str) -> dict:
    """Encode text and write train.bin, val.bin and meta.json into data_dir. Returns the metadata written."""
    vocab = build_vocab(text)
    if len(vocab) > np.iinfo(np.uint16).max + 1:
        raise UsageError(f"the text has {len(vocab)} distinct characters; uint16 ids allow at most 65536")
    ids = np.array(encode(text, vocab), dtype=np.uint16)
    n_train = int(len(ids) * (1 - val_fraction))
    train_ids, val_ids = ids[:n_train], ids[n_train:]
    if len(train_ids) < 2 or len(val_ids) < 2:
        raise UsageError(f"the text ({len(ids)} characters) is too short to split with val_fraction "
                         f"{val_fraction}: each split needs at least 2 characters")
    data_dir = Path(data_dir)
    for name, split_ids in (("train.bin", train_ids), ("val.bin", val_ids)):
        write_atomic(data_dir / name, split_ids.tobytes())
    meta = {
        "format_version": META_FORMAT_VERSION,
        "vocab_size": len(vocab),
        "vocab": vocab,  # id -> character; the inverse map is rebuilt where needed
        "dtype": "uint16",
        "train_tokens": int(len(train_ids)),
        "val_tokens": int(len(val_ids)),
        # load_split checks the .bin files against these, so a truncated or damaged file is caught before training
        "train_sha256": hashlib.sha256(train_ids.tobytes()).hexdigest(),
        "val_sha256": hashlib.sha256(val_ids.tobytes()).hexdigest(),
        "source": source,
    }
    write_atomic(data_dir / "meta.json", json.dumps(meta, ensure_ascii=False, indent=1))
    return meta


# ----------------------------------------------------------------------------------------------------------------------
# Reading

def load_meta(data_dir) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise UsageError(f"{path} not found: {NOT_PREPARED}")
    meta = read_json(path, fix="run prepare_shakespeare.py again")
    vocab = meta.get("vocab")
    if not isinstance(vocab, list) or not all(isinstance(c, str) for c in vocab):
        raise UsageError(f"{path} is corrupt (no readable 'vocab' list): run prepare_shakespeare.py again")
    return meta


def load_split(data_dir, split: str, meta: dict, device: str) -> tuple[torch.Tensor, str]:
    """Read data_dir/<split>.bin into memory (on the training device) as int64 token ids, with its sha256.

    The file is checked against meta.json: its token count and sha256 catch a truncated or damaged file, and every
    id must be inside the vocabulary."""
    path = Path(data_dir) / f"{split}.bin"
    if not path.exists():
        raise UsageError(f"{path} not found: {NOT_PREPARED}")
    raw = path.read_bytes()
    sha256 = hashlib.sha256(raw).hexdigest()
    expected_tokens = meta.get(f"{split}_tokens")
    if len(raw) % 2 or (expected_tokens is not None and len(raw) // 2 != expected_tokens):
        raise UsageError(f"{path} is truncated: it has {len(raw):,} bytes, meta.json expects "
                         f"{expected_tokens * 2 if expected_tokens is not None else 'an even number of'}; "
                         "run prepare_shakespeare.py again")
    expected_sha256 = meta.get(f"{split}_sha256")
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise UsageError(f"{path} is corrupt: its sha256 differs from the one in meta.json; "
                         "run prepare_shakespeare.py again")
    ids = np.frombuffer(raw, dtype=np.uint16)
    vocab_size = len(meta["vocab"])
    if ids.size and int(ids.max()) >= vocab_size:
        raise UsageError(f"{path} holds token id {int(ids.max())} but meta.json's vocabulary has {vocab_size}: "
                         "the data and its meta.json do not match; run prepare_shakespeare.py again")
    return torch.from_numpy(ids.astype(np.int64)).to(device), sha256


def load_data(data_dir, device: str, block_size: int) -> tuple[list[str], torch.Tensor, torch.Tensor, dict]:
    """(vocabulary, train ids, val ids, what a checkpoint remembers of the data), each split checked to hold more
    than one block. The checkpoint's record of the data lets a resume on other data be refused."""
    meta = load_meta(data_dir)
    train_data, train_sha256 = load_split(data_dir, "train", meta, device)
    val_data, val_sha256 = load_split(data_dir, "val", meta, device)
    for name, split in (("train", train_data), ("val", val_data)):
        if len(split) <= block_size:
            raise UsageError(f"block_size {block_size} needs more than {block_size} tokens in the {name} "
                             f"split, which has {len(split)}: lower block_size or use more text")
    data_info = {"train_tokens": len(train_data), "train_sha256": train_sha256,
                 "val_tokens": len(val_data), "val_sha256": val_sha256}
    return meta["vocab"], train_data, val_data, data_info
