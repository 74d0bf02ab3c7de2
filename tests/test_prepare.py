import hashlib
import http.server
import json
import threading

import numpy as np
import pytest

import prepare_shakespeare as prep
from conftest import SHAKESPEARE, build_vocab
from data import decode, encode


def test_encode_decode_round_trip():
    text = "To be, or not to be:\nthat is the question."
    vocab = build_vocab(text)
    ids = encode(text, vocab)
    assert decode(ids, vocab) == text
    assert max(ids) == len(vocab) - 1


def test_shipped_text_counts_and_vocabulary(tmp_path, capsys):
    meta = prep.main([f"--input={SHAKESPEARE}", f"--data_dir={tmp_path}"])
    assert meta["vocab_size"] == 65
    assert (meta["train_tokens"], meta["val_tokens"]) == (1_003_854, 111_540)
    assert "1,003,854 train and 111,540 val tokens" in capsys.readouterr().out
    train_ids = np.memmap(tmp_path / "train.bin", dtype=np.uint16, mode="r")
    val_ids = np.memmap(tmp_path / "val.bin", dtype=np.uint16, mode="r")
    assert len(train_ids) == 1_003_854 and len(val_ids) == 111_540
    text = SHAKESPEARE.read_text(encoding="utf-8")
    on_disk = json.loads((tmp_path / "meta.json").read_text(encoding="utf-8"))
    assert decode(train_ids[:200], on_disk["vocab"]) == text[:200]
    assert decode(val_ids[-200:], on_disk["vocab"]) == text[-200:]


def test_input_any_utf8_text(tmp_path):
    source = tmp_path / "poem.txt"
    source.write_text("héllo wörld, ünïcode ✓\n" * 20, encoding="utf-8")
    meta = prep.main([f"--input={source}", f"--data_dir={tmp_path / 'data'}", "--val_fraction=0.25"])
    assert "✓" in meta["vocab"] and meta["vocab"] == sorted(set(source.read_text(encoding="utf-8")))
    assert meta["train_tokens"] + meta["val_tokens"] == len(source.read_text(encoding="utf-8"))
    assert meta["val_tokens"] == 115


class _Server:
    """Serve fixed bytes on 127.0.0.1 so the download code runs for real without the internet."""

    def __init__(self, body: bytes):
        body_ = body

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(body_)))
                self.end_headers()
                self.wfile.write(body_)

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/input.txt"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_checks_sha256_and_renames_into_place(tmp_path):
    body = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    dest = tmp_path / "input.txt"
    with _Server(body) as server:
        prep.download(server.url, dest, hashlib.sha256(body).hexdigest())
    assert dest.read_bytes() == body
    assert not (tmp_path / "input.txt.part").exists()


def test_download_checksum_mismatch_leaves_no_file_and_explains(tmp_path, capsys):
    with _Server(b"not the text you are looking for") as server:
        with pytest.raises(SystemExit) as exc:
            prep.main([f"--url={server.url}", f"--data_dir={tmp_path}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "Place the file by hand" in err and prep.SHAKESPEARE_SHA256 in err
    assert list(tmp_path.iterdir()) == []


def test_network_failure_retries_then_explains(tmp_path, capsys, monkeypatch):
    sleeps = []
    monkeypatch.setattr(prep.time, "sleep", sleeps.append)
    with _Server(b"") as server:
        dead_url = server.url
    with pytest.raises(SystemExit) as exc:
        prep.main([f"--url={dead_url}", f"--data_dir={tmp_path}"])
    assert exc.value.code == 2
    assert "could not download" in capsys.readouterr().err
    assert sleeps == [1.0, 2.0]  # three tries with exponential backoff between them
    assert list(tmp_path.iterdir()) == []


def test_keep_and_drop_speakers_cut_the_text_into_two_disjoint_parts(tmp_path):
    text = "ROMEO:\nO, she doth teach\nthe torches.\n\nNurse:\nAnon!\n\nJULIET:\nGood night.\n\nROMEO:\nSoft!\n"
    (tmp_path / "play.txt").write_text(text, encoding="utf-8")
    kept = prep.select_speeches(text, "ROMEO, JULIET", "")
    dropped = prep.select_speeches(text, "", "ROMEO,JULIET")
    assert kept == "ROMEO:\nO, she doth teach\nthe torches.\n\nJULIET:\nGood night.\n\nROMEO:\nSoft!\n"
    assert dropped == "Nurse:\nAnon!\n"
    meta = prep.main([f"--input={tmp_path / 'play.txt'}", f"--data_dir={tmp_path / 'kept'}", "--keep_speakers=ROMEO",
                      "--val_fraction=0.2"])
    assert meta["source"].endswith("play.txt (keep_speakers ROMEO)")
    train_ids = np.fromfile(tmp_path / "kept" / "train.bin", dtype=np.uint16)
    assert decode(train_ids.tolist(), meta["vocab"]).startswith("ROMEO:\nO, she doth teach")
    with pytest.raises(prep.UsageError) as exc:
        prep.select_speeches(text, "ROMIO,Tybalt", "")
    assert exc.value.problems == [
        "'keep_speakers': 'ROMIO' never speaks in this text (did you mean 'ROMEO'?); names are as the text writes "
        "them before the colon",
        "'keep_speakers': 'Tybalt' never speaks in this text; names are as the text writes them before the colon"]
