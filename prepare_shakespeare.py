"""Prepare a character-level dataset: Tiny Shakespeare by default, or any UTF-8 text with --input.

    python prepare_shakespeare.py                        # the copy shipped in data/shakespeare_char/input.txt
    python prepare_shakespeare.py --input my_text.txt --out_dir data/my_text

Writes to out_dir:
    train.bin, val.bin  raw uint16 token ids (first 90% / last 10% of the text), readable with np.memmap
    meta.json           the vocabulary (id -> character), and each split's token count and sha256

If the Shakespeare text is missing it is downloaded from the char-rnn repository and its sha256 checked.
"""

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import requests
from tqdm import tqdm

from configurator import UsageError, ensure_dir, exit_with

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
META_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------------------------------
# The vocabulary: every distinct character of the text, sorted, so the same text always gives the same ids.

def build_vocab(text: str) -> list[str]:
    return sorted(set(text))


def encode(text: str, vocab: list[str]) -> list[int]:
    stoi = {ch: i for i, ch in enumerate(vocab)}
    return [stoi[ch] for ch in text]


def decode(ids, vocab: list[str]) -> str:
    return "".join(vocab[i] for i in ids)


# ----------------------------------------------------------------------------------------------------------------------
# Download

class DownloadError(Exception):
    pass


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe(error: Exception) -> str:
    """A download failure in a few words; requests' own messages nest whole reprs of the connection pool."""
    if isinstance(error, requests.ConnectionError):
        return "no connection (is this machine offline?)"
    if isinstance(error, requests.Timeout):
        return "the server did not answer in time"
    return str(error)


def download(url: str, dest: Path, expected_sha256: str, timeout: float = 30.0, retries: int = 3,
             backoff: float = 1.0) -> None:
    """Stream `url` into `dest` via `dest.part`, check its sha256, then rename into place.

    Network failures are retried with exponential backoff. On any failure no file is left behind and
    DownloadError says why.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    last_error = None
    try:
        for attempt in range(retries):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                with requests.get(url, stream=True, timeout=timeout) as response:
                    response.raise_for_status()
                    total = int(response.headers.get("content-length", 0)) or None
                    with open(part, "wb") as f, tqdm(total=total, unit="B", unit_scale=True,
                                                     desc=f"downloading {dest.name}") as bar:
                        for chunk in response.iter_content(chunk_size=1 << 16):
                            f.write(chunk)
                            bar.update(len(chunk))
                break
            except requests.RequestException as e:
                last_error = e
        else:
            raise DownloadError(f"could not download {url} after {retries} tries: {describe(last_error)}")
        actual = sha256_of(part)
        if actual != expected_sha256:
            raise DownloadError(f"checksum mismatch: the file from {url} has sha256 {actual}, expected "
                                f"{expected_sha256}")
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------------------
# Encode and write

def read_text(path: Path) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"input file '{path}' not found: give --input the path of an existing text file") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"input file '{path}' is not UTF-8 text (byte {e.start} is invalid): "
                         "convert it, e.g. with iconv -t utf-8") from None
    if not text:
        raise UsageError(f"input file '{path}' is empty: give a text with some characters in it")
    return text


def prepare(text: str, out_dir: Path, val_fraction: float = 0.1, source: str = "") -> dict:
    """Encode `text` and write train.bin, val.bin and meta.json into out_dir. Returns the metadata written."""
    vocab = build_vocab(text)
    if len(vocab) > np.iinfo(np.uint16).max + 1:
        raise UsageError(f"the text has {len(vocab)} distinct characters; uint16 ids allow at most 65536")
    ids = np.array(encode(text, vocab), dtype=np.uint16)
    n_train = int(len(ids) * (1 - val_fraction))
    train_ids, val_ids = ids[:n_train], ids[n_train:]
    if len(train_ids) < 2 or len(val_ids) < 2:
        raise UsageError(f"the text ({len(ids)} characters) is too short to split with val_fraction "
                         f"{val_fraction}: each split needs at least 2 characters")
    out_dir = Path(out_dir)
    for name, split_ids in (("train.bin", train_ids), ("val.bin", val_ids)):
        write_atomic(out_dir / name, split_ids.tobytes())
    meta = {
        "format_version": META_FORMAT_VERSION,
        "vocab_size": len(vocab),
        "vocab": vocab,  # id -> character; the inverse map is rebuilt where needed
        "dtype": "uint16",
        "train_tokens": int(len(train_ids)),
        "val_tokens": int(len(val_ids)),
        # train.py checks the .bin files against these, so a truncated or damaged file is caught before training
        "train_sha256": hashlib.sha256(train_ids.tobytes()).hexdigest(),
        "val_sha256": hashlib.sha256(val_ids.tobytes()).hexdigest(),
        "source": source,
    }
    write_atomic(out_dir / "meta.json", json.dumps(meta, ensure_ascii=False, indent=1).encode("utf-8"))
    return meta


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file, then rename: an interrupted run leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", help="a UTF-8 text file to train on (default: Tiny Shakespeare)")
    parser.add_argument("--url", default=SHAKESPEARE_URL,
                        help="where to download Tiny Shakespeare if out_dir/input.txt is missing")
    parser.add_argument("--out_dir", default="data/shakespeare_char", help="where train.bin, val.bin, meta.json go")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="share of the text kept for validation")
    args = parser.parse_args(argv)
    try:
        if not 0 < args.val_fraction < 1:
            raise UsageError(f"--val_fraction must be between 0 and 1, got {args.val_fraction}")
        out_dir = ensure_dir(args.out_dir)
        if args.input:
            source = Path(args.input)
        else:
            source = out_dir / "input.txt"
            if not source.exists():
                print(f"{source} is missing: downloading Tiny Shakespeare from {args.url}")
                try:
                    download(args.url, source, SHAKESPEARE_SHA256)
                except DownloadError as e:
                    raise UsageError(f"{e}. Place the file by hand: save Tiny Shakespeare as {source} "
                                     f"(sha256 {SHAKESPEARE_SHA256}) and run this again") from None
        text = read_text(source)
        meta = prepare(text, out_dir, args.val_fraction, source=str(source))
    except UsageError as e:
        exit_with(e)
    print(f"{source}: {len(text):,} characters, vocabulary of {meta['vocab_size']}")
    print(f"wrote {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens to {out_dir}/")
    return meta


if __name__ == "__main__":
    main()
