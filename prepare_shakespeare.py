r"""Prepare a character-level dataset: Tiny Shakespeare by default, or any UTF-8 text with --input.

    python prepare_shakespeare.py                        # the copy shipped in data/shakespeare_char/input.txt
    python prepare_shakespeare.py --input=my_text.txt --data_dir=data/my_text
    python prepare_shakespeare.py --input=data/shakespeare_char/input.txt --keep_speakers=ROMEO,JULIET \
        --data_dir=data/romeo_juliet          # only the lovers' speeches (drop_speakers: all the others')
    python prepare_shakespeare.py --tokenizer=bpe --vocab_size=1024 --data_dir=data/shakespeare_bpe1024

Writes train.bin, val.bin (the first 90% and the last 10% of the text, as uint16 character ids, or uint32 past 65,536
distinct characters) and meta.json (the vocabulary, and each split's size and checksums) into data_dir; data.py
describes the files. With --tokenizer=bpe the ids are subword tokens of a byte-level BPE trained on the train split
alone (bpe.py; needs the tokenizers package), saved beside them as tokenizer.json; val is the same last 10% of the
characters. The text is read in chunks, so a text of several GB needs little memory. If the Shakespeare text is
missing it is downloaded from the char-rnn repository and its sha256 checked.

keep_speakers and drop_speakers cut a play-formatted text (speeches apart by a blank line, each opening with its
speaker's name and a colon on a line of its own, as in Tiny Shakespeare) into the speeches of some speakers, or of
all the others: two disjoint texts from one file, e.g. to pretrain on one and fine-tune on the other (see
config/finetune_richard.py). The speeches keep their order, so val.bin is the last of them.

train.py calls prepare_if_missing first: a run on the default data_dir prepares the shipped text itself, once.
"""

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm import tqdm

import bpe
from configurator import UsageError, build_config, parse_args, refuse_positional, run_command, suggest
from data import write_dataset
from files import ensure_dir, waiting_lock, write_atomic

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_DIR = Path(__file__).resolve().parent / "data" / "shakespeare_char"  # beside the shipped input.txt
PREPARED_FILES = ("train.bin", "val.bin", "meta.json")
PREPARE_LOCK = ".prepare.lock"  # in data_dir: torchrun's processes take turns at prepare_if_missing


@dataclass
class PrepareConfig:
    input: str = ""  # a UTF-8 text file to train on; empty: Tiny Shakespeare, data_dir/input.txt
    data_dir: str = "data/shakespeare_char"  # where train.bin, val.bin and meta.json go
    val_fraction: float = 0.1  # share of the text, at its end, kept for validation
    url: str = ""  # where to download a missing data_dir/input.txt; empty: the shipped copy, else char-rnn's
    keep_speakers: str = ""  # comma-separated speakers (e.g. ROMEO,JULIET): keep only their speeches
    drop_speakers: str = ""  # comma-separated speakers: keep every speech but theirs
    tokenizer: Literal["char", "bpe"] = "char"  # char: a token per character; bpe: subword tokens (byte-level BPE)
    vocab_size: int = 1024  # bpe only: tokens in the vocabulary, 256 (the bytes alone) to 65,536


# ----------------------------------------------------------------------------------------------------------------------
# Download

class DownloadError(Exception):
    pass


def describe(error: Exception) -> str:
    """A download failure in a few words; requests' own messages nest whole reprs of the connection pool."""
    import requests
    if isinstance(error, requests.ConnectionError):
        return "no connection (is this machine offline?)"
    if isinstance(error, requests.Timeout):
        return "the server did not answer in time"
    return str(error)


def fetch(url: str, timeout: float, name: str) -> bytes:
    """The body at url, with a progress bar."""
    import requests
    with requests.get(url, stream=True, timeout=timeout) as response:
        response.raise_for_status()
        total = int(response.headers.get("content-length", 0)) or None
        chunks = []
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {name}") as bar:
            for chunk in response.iter_content(chunk_size=1 << 16):
                chunks.append(chunk)
                bar.update(len(chunk))
    return b"".join(chunks)


def download(url: str, dest: Path, expected_sha256: str, timeout: float = 30.0, retries: int = 3,
             backoff: float = 1.0) -> None:
    """Fetch url, retrying network failures with exponential backoff, check its sha256, then write it to dest.

    On any failure nothing is written and DownloadError says why."""
    import requests  # here, not at the top: train.py imports this module, and requests takes 0.15 s to import
    last_error = None
    for attempt in range(retries):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            body = fetch(url, timeout, Path(dest).name)
            break
        except requests.RequestException as e:
            last_error = e
    else:
        raise DownloadError(f"could not download {url} after {retries} tries: {describe(last_error)}")
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected_sha256:
        raise DownloadError(f"checksum mismatch: the file from {url} has sha256 {actual}, expected {expected_sha256}")
    write_atomic(dest, body)


# ----------------------------------------------------------------------------------------------------------------------
# Read, select and write

def check_text(path: Path) -> int:
    """The size in bytes of the text file at path, refused with one line if it is missing or empty."""
    try:
        size = Path(path).stat().st_size
    except FileNotFoundError:
        raise UsageError(f"input file '{path}' not found: give --input the path of an existing text file") from None
    if not size:
        raise UsageError(f"input file '{path}' is empty: give a text with some characters in it")
    return size


def read_text(path: Path) -> str:
    """The whole text at path, for keep_speakers and drop_speakers, which cut it into speeches."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"input file '{path}' is not UTF-8 text (byte {e.start} is invalid): "
                         "convert it, e.g. with iconv -t utf-8") from None


def speaker_of(speech: str) -> str | None:
    """The name heading a speech ('ROMEO' for 'ROMEO:\n...'), or None for a block that has no heading."""
    first = speech.strip("\n").split("\n", 1)[0]
    return first[:-1] if first.endswith(":") else None


def select_speeches(text: str, keep: str, drop: str) -> str:
    """The speeches of the speakers in keep (comma-separated), or of every speaker but those in drop, in their order;
    the text unchanged when both are empty."""
    if not keep and not drop:
        return text
    if keep and drop:
        raise UsageError("give keep_speakers or drop_speakers, not both: the one names the speeches kept, the other "
                         "those left out")
    key, names = ("keep_speakers", keep) if keep else ("drop_speakers", drop)
    wanted = {name.strip() for name in names.split(",") if name.strip()}
    speeches = [speech for speech in text.split("\n\n") if speech.strip("\n")]
    speakers = {speaker_of(speech) for speech in speeches} - {None}
    problems = [f"'{key}': {name!r} never speaks in this text{suggest(name, speakers)}; names are as the text writes "
                "them before the colon" for name in sorted(wanted - speakers)]
    if problems:
        raise UsageError(problems)
    kept = [speech.strip("\n") for speech in speeches if (speaker_of(speech) in wanted) == bool(keep)]
    return "\n\n".join(kept) + "\n"


def main(argv=None):
    return run_command(prepare, argv, __doc__, PrepareConfig)


def prepare(argv=None) -> dict:
    """The command line: prepare what its options say, and report what was written."""
    positional, options = parse_args(argv)
    refuse_positional(positional)
    given = set()
    cfg = build_config(PrepareConfig, None, options, given=given)
    if "vocab_size" in given and cfg.tokenizer == "char":
        raise UsageError("'vocab_size' sets the size of a BPE vocabulary (a character vocabulary is the text's "
                         "characters): add --tokenizer=bpe, or leave vocab_size out")
    if cfg.tokenizer == "bpe":  # before the text is read
        bpe.check_vocab_size(cfg.vocab_size)
        bpe.library()
    meta = prepare_text(cfg)
    if cfg.tokenizer == "bpe":
        chars, tokens = meta["train_chars"] + meta["val_chars"], meta["train_tokens"] + meta["val_tokens"]
        print(f"{meta['source']}: {chars:,} characters in {tokens:,} BPE tokens ({chars / tokens:.2f} characters "
              f"a token), vocabulary of {meta['vocab_size']}")
    else:
        print(f"{meta['source']}: {meta['train_tokens'] + meta['val_tokens']:,} characters, vocabulary of "
              f"{meta['vocab_size']}")
    print(f"wrote {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens to {Path(cfg.data_dir)}/")
    return meta


def prepare_text(cfg: PrepareConfig) -> dict:
    """Write train.bin, val.bin and meta.json into cfg.data_dir from the text cfg names, downloading Tiny Shakespeare
    first if it is missing. Returns the metadata written; prints nothing else unless it downloads."""
    if not 0 < cfg.val_fraction < 1:
        raise UsageError(f"'val_fraction' must be between 0 and 1, got {cfg.val_fraction}")
    data_dir = ensure_dir(cfg.data_dir, key="data_dir")
    source = Path(cfg.input) if cfg.input else data_dir / "input.txt"
    if not cfg.input and not cfg.url and not source.exists() and (SHAKESPEARE_DIR / "input.txt").is_file():
        source = SHAKESPEARE_DIR / "input.txt"  # the shipped copy, for another data_dir (e.g. its BPE tokens)
    if not cfg.input and not source.exists():
        url = cfg.url or SHAKESPEARE_URL
        print(f"{source} is missing: downloading Tiny Shakespeare from {url}")
        try:
            download(url, source, SHAKESPEARE_SHA256)
        except DownloadError as e:
            raise UsageError(f"{e}. Place the file by hand: save Tiny Shakespeare as {source} "
                             f"(sha256 {SHAKESPEARE_SHA256}) and run this again") from None
    size, origin = check_text(source), str(source)
    if cfg.keep_speakers or cfg.drop_speakers:
        # A selection of speeches is cut from the whole text (a play, not gigabytes), and written beside the data as
        # the text it encodes.
        text = select_speeches(read_text(source), cfg.keep_speakers, cfg.drop_speakers)
        origin += f" (keep_speakers {cfg.keep_speakers})" if cfg.keep_speakers else \
            f" (drop_speakers {cfg.drop_speakers})"
        source = data_dir / "selected.txt"
        write_atomic(source, text)
        size = source.stat().st_size
    passes = 4 if cfg.tokenizer == "bpe" else 2  # bpe: the characters, training, the train split, the val split
    with tqdm(total=passes * size, unit="B", unit_scale=True, desc=f"encoding {source.name}",
              disable=size < 64 << 20) as bar:
        try:
            meta = write_dataset(source, data_dir, cfg.val_fraction, source=origin, on_read=bar.update,
                                 vocab_size=cfg.vocab_size if cfg.tokenizer == "bpe" else 0)
        except UnicodeDecodeError as e:
            raise UsageError(f"input file '{source}' is not UTF-8 text (byte {e.start} is invalid): "
                             "convert it, e.g. with iconv -t utf-8") from None
    return meta


# ----------------------------------------------------------------------------------------------------------------------
# Prepared on first use, for train.py

def prepare_if_missing(data_dir: str) -> bool:
    """Prepare a folder of the shipped Tiny Shakespeare if its prepared files are missing, saying so in one line: the
    default data/shakespeare_char, or data/shakespeare_bpe<N> beside it (BPE tokens, a vocabulary of N, as
    config/cpu_bpe.py reads). True if it prepared. False, having touched nothing, for any other data_dir (load_meta's
    error names prepare_shakespeare.py there) or when the files are there. Safe from several processes at once."""
    folder = Path(data_dir)
    bpe_size = re.fullmatch(r"shakespeare_bpe(\d+)", folder.name)
    if folder.resolve() == SHAKESPEARE_DIR.resolve():
        # The command line's defaults, so the files are those `python prepare_shakespeare.py` writes there.
        settings = PrepareConfig(data_dir=str(data_dir))
    elif bpe_size and folder.resolve().parent == SHAKESPEARE_DIR.resolve().parent:
        settings = PrepareConfig(data_dir=str(data_dir), tokenizer="bpe", vocab_size=int(bpe_size.group(1)))
    else:
        return False
    if is_prepared(folder):
        return False
    with waiting_lock(ensure_dir(folder, key="data_dir") / PREPARE_LOCK):
        if is_prepared(folder):  # another process prepared it while this one waited for the lock
            return False
        print(f"preparing {data_dir} from the shipped Tiny Shakespeare (once) ...", flush=True)
        prepare_text(settings)
    return True


def is_prepared(folder: Path) -> bool:
    """Whether all of prepare's files are there; a preparation cut short (a train.bin without meta.json) is not."""
    return all((folder / name).is_file() for name in PREPARED_FILES)


if __name__ == "__main__":
    main()
