"""The prepared dataset: text to token ids and back (characters, or bpe.py's subword tokens), and the files train.bin,
val.bin and meta.json, written here for prepare_shakespeare.py and read here for train.py and bench.py.

    train.bin, val.bin  raw token ids (the first and last part of the text), readable with np.memmap: uint16, as
                        nanoGPT writes them, or uint32 for a vocabulary of more than 65,536 characters
    meta.json           the vocabulary (id -> character, or token), the id dtype, and each split's token count and
                        checksums; for BPE tokens also "tokenizer": "bpe", and each split's characters
    tokenizer.json      BPE tokens only: the tokenizer (Hugging Face tokenizers' format)

Both sides work in pieces, so that a text larger than memory can be prepared and trained on: the text is read and
encoded in chunks, and training reads the token files through a memory map (only the pages a batch touches).
"""

import codecs
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

import bpe
from configurator import UsageError
from files import read_json, write_atomic

META_FORMAT_VERSION = 1
BPE_FILE = "tokenizer.json"  # a BPE dataset's tokenizer, beside its token files (Hugging Face tokenizers' format)
NOT_PREPARED = "run prepare_shakespeare.py first (or point --data_dir at prepared data)"
ID_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
CHUNK_BYTES = 1 << 24  # how much of the text is read and encoded at a time: bounds prepare's memory
# Checked in full at every start up to this size; past it, the start-up check reads SPOT_BLOCKS spread blocks.
FULL_CHECK_BYTES = 64 << 20
SPOT_BLOCKS, SPOT_BLOCK_BYTES = 64, 1 << 16


# ----------------------------------------------------------------------------------------------------------------------
# The vocabulary: every distinct character of the text, sorted (scan_text), so the same text always gives the same ids.

def encode(text: str, vocab: list[str]) -> list[int]:
    """Ids of text's tokens: its characters, refusing those outside the vocabulary, every one of them named; with a
    BPE vocabulary (bpe.Vocabulary), its subword tokens, of any text."""
    if isinstance(vocab, bpe.Vocabulary):
        return bpe.encode(text, vocab)
    stoi = {ch: i for i, ch in enumerate(vocab)}
    unknown = sorted({ch for ch in text if ch not in stoi})
    if unknown:
        raise UsageError(f"the prompt has characters the model never saw: {' '.join(repr(c) for c in unknown)}; "
                         "remove or replace them")
    return [stoi[ch] for ch in text]


def decode(ids, vocab: list[str]) -> str:
    return bpe.decode(ids, vocab) if isinstance(vocab, bpe.Vocabulary) else "".join(vocab[i] for i in ids)


def id_dtype(vocab_size: int) -> str:
    """uint16 (nanoGPT's format) while every id fits in it, else uint32."""
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "uint32"


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
# Writing, a chunk at a time

def text_chunks(path: Path, chunk_bytes: int | None = None, on_read=None):
    """The UTF-8 text file at path as str pieces of about chunk_bytes, with newlines read as Python reads text files
    (\r\n and \r become \n). A byte that is not UTF-8 raises UnicodeDecodeError with start = its offset in the
    file. on_read, if given, is called with the number of bytes of each piece read (for a progress bar)."""
    decoder, offset, held, chunk_bytes = codecs.getincrementaldecoder("utf-8")(), 0, "", chunk_bytes or CHUNK_BYTES
    with open(path, "rb") as f:
        while True:
            raw = f.read(chunk_bytes)
            try:
                piece = held + decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise UnicodeDecodeError(e.encoding, e.object, offset + e.start, offset + e.end, e.reason) from None
            offset += len(raw)
            if on_read is not None:
                on_read(len(raw))
            # a \r at the end may be the first half of a \r\n: keep it for the next piece
            held = "\r" if raw and piece.endswith("\r") else ""
            piece = (piece[:-1] if held else piece).replace("\r\n", "\n").replace("\r", "\n")
            if piece:
                yield piece
            if not raw:
                return


def scan_text(path: Path, chunk_bytes: int | None = None, on_read=None) -> tuple[list[str], int]:
    """(vocabulary, number of characters) of the text file, read a chunk at a time; each chunk's characters are
    counted by code point, an array operation rather than a loop over characters."""
    seen, n_chars = np.zeros(0, dtype=bool), 0
    for piece in text_chunks(path, chunk_bytes, on_read):
        present = np.bincount(np.frombuffer(piece.encode("utf-32-le"), dtype=np.uint32)) > 0
        if len(present) > len(seen):
            seen = np.pad(seen, (0, len(present) - len(seen)))
        seen[:len(present)] |= present
        n_chars += len(piece)
    return [chr(code) for code in np.flatnonzero(seen)], n_chars


def encoded_chunks(path: Path, vocab: list[str], dtype: str, chunk_bytes: int | None = None, on_read=None):
    """The text's ids, a chunk at a time, through a table from code point to id (one array lookup per chunk)."""
    table = np.zeros(ord(max(vocab)) + 1, dtype=ID_DTYPES[dtype])
    table[[ord(ch) for ch in vocab]] = np.arange(len(vocab))
    for piece in text_chunks(path, chunk_bytes, on_read):
        yield table[np.frombuffer(piece.encode("utf-32-le"), dtype=np.uint32)]


def write_ids(path: Path, chunks, n_tokens: int | None = None, leftover: list | None = None) -> dict:
    """Write the first n_tokens ids of chunks (None: all of them) to path (atomically), hashing them as they go. What
    is left of the last chunk read goes into leftover, for the next split. Returns the split's tokens and checksums."""
    sha256, written = hashlib.sha256(), 0

    def write(f):
        nonlocal written
        for ids in chunks:
            part = ids if n_tokens is None else ids[:n_tokens - written]
            f.write(part.tobytes())
            sha256.update(part.tobytes())
            written += len(part)
            if written == n_tokens:
                if leftover is not None:
                    leftover.append(ids[len(part):])
                return

    write_atomic(path, write)
    return {"tokens": written, "sha256": sha256.hexdigest(), "spot_sha256": spot_sha256(path)}


def write_dataset(path: Path, data_dir: Path, val_fraction: float, source: str, chunk_bytes: int | None = None,
                  on_read=None, vocab_size: int = 0) -> dict:
    """Encode the text file at path into train.bin, val.bin and meta.json in data_dir, reading the text a chunk at a
    time: its characters, then their ids. vocab_size > 0: subword tokens instead, a byte-level BPE of that many
    trained on the train split alone (bpe.py), written beside them as tokenizer.json. Either way val is the text's
    last val_fraction of characters. Returns the metadata written."""
    chars, n_chars = scan_text(path, chunk_bytes, on_read)
    n_train = int(n_chars * (1 - val_fraction))
    if n_train < 2 or n_chars - n_train < 2:
        raise UsageError(f"the text ({n_chars} characters) is too short to split with val_fraction "
                         f"{val_fraction}: each split needs at least 2 characters")
    data_dir = Path(data_dir)
    if vocab_size:
        # trained on the train split, or on a sample spread over it past bpe.TRAIN_CHARS; read in small chunks, so
        # that the sample takes a little of every part of the text
        sample = bpe.spread_sample(pieces_between(path, 0, n_train, 1 << 20, on_read), n_train)
        vocab = bpe.train(sample, vocab_size)
        train = write_ids(data_dir / "train.bin", bpe.encode_pieces(pieces_between(path, 0, n_train, chunk_bytes,
                                                                                   on_read), vocab))
        val = write_ids(data_dir / "val.bin", bpe.encode_pieces(pieces_between(path, n_train, n_chars, chunk_bytes,
                                                                               on_read), vocab))
        write_atomic(data_dir / BPE_FILE, vocab.tokenizer)
        tokenizer = {"tokenizer": "bpe", "tokenizer_sha256": hashlib.sha256(vocab.tokenizer.encode()).hexdigest(),
                     "train_chars": n_train, "val_chars": n_chars - n_train}
    else:
        vocab, leftover, tokenizer = chars, [], {}
        chunks = encoded_chunks(path, vocab, id_dtype(len(vocab)), chunk_bytes, on_read)
        train = write_ids(data_dir / "train.bin", chunks, n_train, leftover)
        val = write_ids(data_dir / "val.bin", (ids for part in (leftover, chunks) for ids in part), n_chars - n_train)
    meta = {
        "format_version": META_FORMAT_VERSION,
        "vocab_size": len(vocab),
        "vocab": list(vocab),  # id -> character (a BPE's: id -> token, in GPT-2's byte alphabet)
        "dtype": id_dtype(len(vocab)),
        # load_split checks the .bin files against these, so a truncated or damaged file is caught before training
        **{f"{name}_{key}": value for name, split in (("train", train), ("val", val)) for key, value in split.items()},
        **tokenizer,
        "source": source,
    }
    write_atomic(data_dir / "meta.json", json.dumps(meta, ensure_ascii=False, indent=1))
    return meta


def pieces_between(path: Path, start: int, stop: int, chunk_bytes: int | None = None, on_read=None):
    """The characters start to stop of the text file at path, as str pieces (text_chunks)."""
    seen = 0
    for piece in text_chunks(path, chunk_bytes, on_read):
        if seen + len(piece) > start:
            yield piece[max(start - seen, 0):stop - seen]
        seen += len(piece)
        if seen >= stop:
            return


def spot_sha256(path: Path) -> str:
    """sha256 of SPOT_BLOCKS blocks spread evenly over the file (all of it when it is smaller): a start-up check of a
    large file that reads a few MB, not the file."""
    size, sha256 = Path(path).stat().st_size, hashlib.sha256()
    with open(path, "rb") as f:
        if size <= SPOT_BLOCKS * SPOT_BLOCK_BYTES:
            sha256.update(f.read())
        else:
            for i in range(SPOT_BLOCKS):
                f.seek((size - SPOT_BLOCK_BYTES) * i // (SPOT_BLOCKS - 1))
                sha256.update(f.read(SPOT_BLOCK_BYTES))
    return sha256.hexdigest()


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
    if meta.get("tokenizer") == "bpe":  # the vocabulary carries the tokenizer, which encoding needs
        tokenizer_path = Path(data_dir) / BPE_FILE
        if not tokenizer_path.is_file():
            raise UsageError(f"{tokenizer_path} not found, and {path} says the data is BPE tokens: "
                             "run prepare_shakespeare.py again")
        tokenizer = tokenizer_path.read_text(encoding="utf-8")
        if hashlib.sha256(tokenizer.encode()).hexdigest() != meta.get("tokenizer_sha256"):
            raise UsageError(f"{tokenizer_path} is not the tokenizer the data was encoded with (its sha256 differs "
                             f"from the one in meta.json): run prepare_shakespeare.py again")
        meta["vocab"] = bpe.Vocabulary(vocab, tokenizer)
    return meta


def check_split(path: Path, split: str, meta: dict) -> tuple[np.ndarray, str]:
    """(the token ids of path as a memory map, the sha256 of the whole file), checked against meta.json: the size
    catches a truncated file; the sha256 (of the whole file up to FULL_CHECK_BYTES, else of spread blocks) a damaged
    one; and for a file checked whole, every id must be inside the vocabulary. Past FULL_CHECK_BYTES the whole
    file's sha256 is the one prepare recorded, so that a start-up reads a few MB of the file, not all of it."""
    dtype = np.dtype(ID_DTYPES.get(meta.get("dtype", "uint16"), np.uint16))
    size, expected_tokens = path.stat().st_size, meta.get(f"{split}_tokens")
    if size % dtype.itemsize or (expected_tokens is not None and size // dtype.itemsize != expected_tokens):
        expected = f"{expected_tokens * dtype.itemsize:,}" if expected_tokens is not None else "a whole number of ids"
        raise UsageError(f"{path} is truncated: it has {size:,} bytes, meta.json expects {expected}; "
                         "run prepare_shakespeare.py again")
    whole = size <= FULL_CHECK_BYTES or f"{split}_spot_sha256" not in meta or f"{split}_sha256" not in meta
    key = f"{split}_sha256" if whole else f"{split}_spot_sha256"
    actual = (hashlib.sha256(path.read_bytes()).hexdigest() if whole else spot_sha256(path))
    if meta.get(key) is not None and actual != meta[key]:
        raise UsageError(f"{path} is corrupt: its sha256 differs from the one in meta.json; "
                         "run prepare_shakespeare.py again")
    # copy-on-write: torch wants a writable array; nothing is ever written back to the file
    ids = np.memmap(path, dtype=dtype, mode="c") if size else np.zeros(0, dtype)
    vocab_size = len(meta["vocab"])
    if whole and ids.size and int(ids.max()) >= vocab_size:
        raise UsageError(f"{path} holds token id {int(ids.max())} but meta.json's vocabulary has {vocab_size}: "
                         "the data and its meta.json do not match; run prepare_shakespeare.py again")
    return ids, actual if whole else meta[f"{split}_sha256"]


def indexable(dtype: torch.dtype) -> bool:
    """Whether this PyTorch can index a tensor of dtype (2.13 can for uint16 and uint32; 2.4 cannot)."""
    try:
        torch.zeros(1, dtype=dtype)[torch.zeros(1, dtype=torch.long)]
        return True
    except (RuntimeError, NotImplementedError):
        return False


def place(ids: np.ndarray, device: str, vocab_size: int) -> torch.Tensor:
    """The split where batches are drawn from. On the CPU, the memory map itself (ids as stored: pages are read as
    batches touch them). On a GPU, the whole split as int32 ids, copied over in pieces, when it takes under a quarter
    of the free GPU memory; otherwise it stays a memory map on the host and each batch is copied over."""
    host = torch.from_numpy(ids)
    if not indexable(host.dtype):
        # Older PyTorch cannot index unsigned tensors. Ids that fit the signed type of the same width are the same
        # bytes read that way; uint16 ids of a vocabulary past 32,768 are widened to int32, in memory.
        signed = {torch.uint16: torch.int16, torch.uint32: torch.int32}[host.dtype]
        fits = vocab_size <= 1 << (8 * host.element_size() - 1)
        host = host.view(signed) if fits else torch.from_numpy(ids.astype(np.int32))
    if device == "cpu" or (device.startswith("cuda") and 4 * len(ids) > torch.cuda.mem_get_info(device)[0] // 4):
        return host
    resident, piece = torch.empty(len(ids), dtype=torch.int32, device=device), 1 << 24  # ids per copy
    for start in range(0, len(ids), piece):
        resident[start:start + piece] = host[start:start + piece].to(torch.int32).to(device)
    return resident


def load_split(data_dir, split: str, meta: dict, device: str) -> tuple[torch.Tensor, str]:
    """data_dir/<split>.bin, checked (check_split) and placed for drawing batches on device (place), with its sha256:
    the data's identity, which a resume checks."""
    path = Path(data_dir) / f"{split}.bin"
    if not path.exists():
        raise UsageError(f"{path} not found: {NOT_PREPARED}")
    ids, sha256 = check_split(path, split, meta)
    return place(ids, device, len(meta["vocab"])), sha256


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
