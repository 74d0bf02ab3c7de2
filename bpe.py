"""Subword tokens: a byte-level byte-pair encoding (BPE), trained on a text's train split, and the vocabulary that
carries it through a run.

A byte-level BPE starts from the 256 byte values, so it can encode any text, and merges the most frequent pairs of
tokens into new ones until it has vocab_size. Hugging Face's tokenizers library trains it and encodes text (it is
imported only here, and only for a BPE dataset: pip install -r requirements-extras.txt). Each token is written, as in
GPT-2, as a string over a printable alphabet of 256 characters, one per byte ("Ġ" is the space byte): decoding and
counting characters need only that alphabet, not the library.

A run's vocabulary is a list of token strings, id -> token, as a character run's is a list of characters. A BPE run's
is a Vocabulary, a list that also carries the tokenizer (its JSON), which encoding needs. Checkpoints save it as a
plain list and the JSON beside it (save_fields), and rebuild it from them (from_fields).
"""

from functools import lru_cache
from itertools import chain

import numpy as np

from configurator import UsageError

INSTALL = "pip install -r requirements-extras.txt"
PIECE_CHARS = 1 << 18  # characters in one part of a batch encoded in parallel, cut after a newline
BATCH_PARTS = 8  # parts encoded at a time: bounds the library's memory (it holds every token's details)
TRAIN_CHARS = 1 << 24  # characters a tokenizer is trained on at most, spread over the train split


class Vocabulary(list):
    """A BPE run's vocabulary: id -> token string (GPT-2's byte alphabet), with the tokenizer's JSON."""

    def __init__(self, tokens, tokenizer: str):
        super().__init__(tokens)
        self.tokenizer = tokenizer


def byte_of_char() -> dict[str, int]:
    """GPT-2's byte alphabet, character -> byte: the bytes printable in Latin-1 as themselves, the others (control
    characters, the space, a few more) as the code points from 256 up, in order."""
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}


def token_bytes(vocab: list[str]) -> list[bytes]:
    """Each token's bytes."""
    table = byte_of_char()
    return [bytes(table[ch] for ch in token) for token in vocab]


def token_chars(vocab: list[str]) -> list[int]:
    """How many characters of the text each token holds: 1 for a character run's; for a BPE run's, the UTF-8 bytes
    that start a character, so that a character split over two tokens counts once, in the token that starts it."""
    if not isinstance(vocab, Vocabulary):
        return [1] * len(vocab)
    return [sum(1 for b in raw if b & 0xC0 != 0x80) for raw in token_bytes(vocab)]


def decode(ids, vocab: "Vocabulary") -> str:
    """The text of ids; bytes that do not make a whole character (a sample may end inside one) become U+FFFD."""
    raw = token_bytes_of(tuple(vocab))
    return b"".join(raw[i] for i in ids).decode("utf-8", errors="replace")


@lru_cache(maxsize=4)
def token_bytes_of(tokens: tuple) -> list[bytes]:
    return token_bytes(list(tokens))


def library():
    """Hugging Face tokenizers, or one line that says how to install it."""
    try:
        import tokenizers
    except ImportError:
        raise UsageError(f"BPE tokens need the tokenizers package: {INSTALL}") from None
    return tokenizers


@lru_cache(maxsize=4)
def loaded(tokenizer: str):
    return library().Tokenizer.from_str(tokenizer)


def encode(text: str, vocab: "Vocabulary") -> list[int]:
    """The ids of text: any text, as every byte is a token."""
    return loaded(vocab.tokenizer).encode(text, add_special_tokens=False).ids


def train(texts, vocab_size: int) -> Vocabulary:
    """A byte-level BPE of vocab_size tokens (256 bytes and vocab_size - 256 merges; fewer where a short text runs out
    of pairs to merge) trained on texts (an iterator of str pieces: the train split)."""
    check_vocab_size(vocab_size)
    lib = library()
    tokenizer = lib.Tokenizer(lib.models.BPE())
    tokenizer.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split into words
    tokenizer.decoder = lib.decoders.ByteLevel()
    trainer = lib.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=lib.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    ids = tokenizer.get_vocab()
    return Vocabulary(sorted(ids, key=ids.get), tokenizer.to_str())


def check_vocab_size(vocab_size: int) -> None:
    if not 256 <= vocab_size <= 65536:
        raise UsageError(f"'vocab_size' must be from 256 (the bytes alone) to 65,536 (token ids of 2 bytes), got "
                         f"{vocab_size}")


def encode_pieces(pieces, vocab: Vocabulary):
    """The ids of a text given as str pieces, an array a piece (numpy uint16/uint32 by the vocabulary's size). Each
    piece is cut into parts that end at a newline, encoded in parallel: a word is never cut between two parts."""
    tokenizer, dtype = loaded(vocab.tokenizer), np.uint16 if len(vocab) <= 65536 else np.uint32
    held = ""
    for piece in chain(pieces, [None]):
        text = held + (piece or "")
        cut = len(text) if piece is None else text.rfind("\n") + 1
        held, text = text[cut:], text[:cut]
        parts = lines_parts(text, PIECE_CHARS)
        for first in range(0, len(parts), BATCH_PARTS):
            encoded = tokenizer.encode_batch_fast(parts[first:first + BATCH_PARTS], add_special_tokens=False)
            yield np.concatenate([np.asarray(e.ids, dtype=dtype) for e in encoded])


def lines_parts(text: str, size: int) -> list[str]:
    """text cut into parts of about size characters, each ending after a newline (the last one where text ends)."""
    parts, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end == -1 else end + 1
        parts.append(text[start:end])
        start = end
    return parts


def spread_sample(pieces, total_chars: int, budget: int = TRAIN_CHARS):
    """About budget characters of a text of total_chars, given as str pieces: the same share of every piece (its
    first lines), so that a tokenizer of a large text learns from all of it in a bounded time and memory. The whole
    text where it is no longer than budget."""
    share = min(budget / max(total_chars, 1), 1.0)
    for piece in pieces:
        if share == 1.0:
            yield piece
        else:
            keep = int(len(piece) * share)
            cut = piece.find("\n", keep)
            yield piece[:len(piece) if cut == -1 else cut + 1]


def tokenizer_mismatch(model_vocab: list[str], data_vocab: list[str]) -> str | None:
    """None where the data's tokens are the model's (characters, or the same BPE); else how they differ. A BPE's token
    ids mean nothing under another tokenizer, and a character vocabulary cannot take a BPE's tokens, nor the reverse."""
    tokenizers = [getattr(v, "tokenizer", None) for v in (model_vocab, data_vocab)]
    if tokenizers[0] == tokenizers[1]:
        return None
    kinds = ["characters" if t is None else "BPE tokens" for t in tokenizers]
    if kinds[0] == kinds[1]:
        return "the model and the data have different BPE tokenizers"
    return f"the model reads {kinds[0]}, and the data is {kinds[1]}"


def save_fields(vocab: list[str]) -> dict:
    """What a checkpoint or meta.json keeps of a vocabulary: the list, and a BPE's tokenizer (JSON) beside it."""
    return {"vocab": list(vocab), **({"tokenizer": vocab.tokenizer} if isinstance(vocab, Vocabulary) else {})}


def from_fields(fields: dict) -> list[str]:
    """The vocabulary save_fields kept: a plain list of characters, or a Vocabulary with its tokenizer."""
    tokenizer = fields.get("tokenizer")
    return Vocabulary(fields["vocab"], tokenizer) if tokenizer else list(fields["vocab"])
