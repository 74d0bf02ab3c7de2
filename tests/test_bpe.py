"""Subword tokens (bpe.py, prepare_shakespeare.py --tokenizer=bpe): exact round trips, a tokenizer that never saw
the val split, bits per character that runs of any tokenizer share, and a BPE run that trains, samples, resumes and
exports; each refusal's line."""

import json
import math
from contextlib import nullcontext

import numpy as np
import pytest
import torch

import bpe
import data
import prepare_shakespeare
import sample
import train
from checkpoint import load_model
from conftest import tiny_train_args
from evaluate import bits_per_character
from model import GPT, GPTConfig

tokenizers = pytest.importorskip("tokenizers")  # installed by .ci/run from requirements-extras.txt

TEXTS = ["", "a", "First Citizen:\nBefore we proceed any further, hear me speak.", "  two  spaces\n\n\nlines \t",
         "héllo wörld, naïve café", "日本語のテキスト", "emoji 🙂🚀 and \x00\x07 control bytes",
         "\r\n and \r alone"]


@pytest.fixture(scope="module")
def vocab():
    return bpe.train(iter(["the quick brown fox jumps over the lazy dog\n" * 50, "ROMEO:\nO Romeo\n" * 20]), 300)


@pytest.mark.parametrize("text", TEXTS)
def test_encoding_then_decoding_any_text_gives_it_back_exactly(text, vocab):
    ids = data.encode(text, vocab)
    assert data.decode(ids, vocab) == text
    assert all(0 <= i < len(vocab) for i in ids)
    assert sum(bpe.token_chars(vocab)[i] for i in ids) == len(text)  # each character counted once


def test_the_byte_alphabet_is_the_tokenizers_library_one_and_merges_follow_the_bytes(vocab):
    assert set(bpe.byte_of_char()) == set(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    assert 256 < len(vocab) <= 300  # fewer where the text runs out of pairs to merge, as this short one does
    assert sorted(bpe.byte_of_char().values()) == list(range(256))
    assert all(len(raw) == 1 for raw in bpe.token_bytes(vocab)[:256])
    assert "Ġthe" in vocab  # " the", a frequent word of the text it was trained on, is one token


def test_prepare_splits_the_characters_where_a_character_dataset_does_and_trains_on_train_only(tiny_data, tmp_path,
                                                                                             monkeypatch):
    text = (tiny_data / "tiny.txt").read_text(encoding="utf-8")
    n_train = int(len(text) * 0.9)
    seen, real_train = [], bpe.train

    def train_recording(texts, vocab_size):
        texts = list(texts)
        seen.append("".join(texts))
        return real_train(iter(texts), vocab_size)

    monkeypatch.setattr(bpe, "train", train_recording)
    meta = prepare_shakespeare.main([f"--input={tiny_data / 'tiny.txt'}", f"--data_dir={tmp_path}",
                                     "--tokenizer=bpe", "--vocab_size=300"])
    assert seen == [text[:n_train]]  # the tokenizer never saw the val split
    vocab = data.load_meta(tmp_path)["vocab"]
    assert isinstance(vocab, bpe.Vocabulary) and len(vocab) == meta["vocab_size"] == 300
    train_ids, val_ids = (np.fromfile(tmp_path / f"{split}.bin", dtype=np.uint16) for split in ("train", "val"))
    assert data.decode(train_ids.tolist(), vocab) == text[:n_train]
    assert data.decode(val_ids.tolist(), vocab) == text[n_train:]  # the last 10% of the characters, as for chars
    assert (meta["train_chars"], meta["val_chars"]) == (n_train, len(text) - n_train)
    assert meta["val_tokens"] < meta["val_chars"]  # each token holds characters on average more than one


def test_a_character_runs_bits_per_character_are_its_val_loss_over_ln_2(tiny_run):
    counts = torch.randint(1, 50, (4, 65))
    for loss in (0.1, 1.4697, 3.3710123):
        assert bits_per_character(loss, counts, [1] * 65) == loss / math.log(2)  # exactly, not nearly
    for line in (tiny_run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)  # both rounded to 6 decimals from the unrounded loss
        assert record["val_bpc"] == pytest.approx(record["val_loss"] / math.log(2), abs=1.5e-6)
    assert json.loads((tiny_run / "summary.json").read_text())["best_val_bpc"] is not None


@pytest.mark.parametrize("which", ["char", "bpe"])
def test_a_uniform_model_gets_the_bits_per_character_the_arithmetic_says(which, tiny_data, tiny_bpe_data):
    data_dir = tiny_data if which == "char" else tiny_bpe_data
    vocab, _, val_ids, _ = data.load_data(data_dir, "cpu", 16)
    model = GPT(GPTConfig(block_size=16, vocab_size=len(vocab), n_layer=1, n_head=2, n_embd=32, tie_weights=False))
    torch.nn.init.zeros_(model.lm_head.weight)  # every token equally likely: ln V nats each
    cfg = train.TrainConfig(block_size=16, batch_size=8)
    evaluation = train.estimate_loss(model, {"val": (val_ids, 0)}, cfg, nullcontext())
    assert evaluation["val_loss"] == pytest.approx(math.log(len(vocab)), rel=1e-6)
    chars = sum(bpe.token_chars(vocab)[i] for i in val_ids[1:].tolist())  # the characters of the targets
    expected = math.log2(len(vocab)) * (len(val_ids) - 1) / chars
    assert bits_per_character(evaluation["val_loss"], evaluation["val_counts"], bpe.token_chars(vocab)) == \
        pytest.approx(expected, rel=1e-6)
    assert (expected == pytest.approx(math.log2(len(vocab)))) == (which == "char")


@pytest.fixture(scope="module")
def bpe_run(tiny_bpe_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe_runs") / "run"
    train.main(tiny_train_args(tiny_bpe_data, out))
    return out


def test_a_bpe_run_trains_samples_and_logs_bits_per_character(bpe_run, tiny_bpe_data):
    metrics = [json.loads(line) for line in (bpe_run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["val_bpc"] < metrics[0]["val_bpc"]
    meta = data.load_meta(tiny_bpe_data)
    chars_per_token = meta["val_chars"] / meta["val_tokens"]
    for m in metrics:  # nats a token, over the characters a token holds, in bits
        assert m["val_bpc"] == pytest.approx(m["val_loss"] / math.log(2) / chars_per_token, rel=0.02)
    assert all(len(m["sample"]) == 101 for m in metrics if "sample" in m)  # eval_sample_chars counts characters
    model, vocab, _ = load_model(bpe_run, "cpu")
    assert isinstance(vocab, bpe.Vocabulary) and vocab.tokenizer == meta["vocab"].tokenizer
    texts = sample.main([f"--out_dir={bpe_run}", "--start=ROMEO: ünïcode", "--num_samples=2",
                         "--max_new_tokens=20", "--device=cpu"])
    assert all(text.startswith("ROMEO: ünïcode") and len(text) > 20 for text in texts)


def test_a_bpe_run_resumes_the_same_curve(bpe_run, tiny_bpe_data, tmp_path):
    halves = tmp_path / "halves"
    train.main(tiny_train_args(tiny_bpe_data, halves, max_iters=20, lr_decay_iters=40))
    train.main(tiny_train_args(tiny_bpe_data, halves, max_iters=40, lr_decay_iters=40, init_from="resume"))
    curve = [(m["iter_num"], m["train_loss"], m["val_loss"], m["val_bpc"], m.get("sample"))
             for m in map(json.loads, (halves / "metrics.jsonl").read_text().splitlines())]
    expected = [(m["iter_num"], m["train_loss"], m["val_loss"], m["val_bpc"], m.get("sample"))
                for m in map(json.loads, (bpe_run / "metrics.jsonl").read_text().splitlines())]
    assert curve == expected


def test_a_bpe_run_exports_with_its_tokenizer_and_transformers_writes_our_greedy_text(bpe_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    import export
    export.main([f"--out_dir={bpe_run}", f"--output={tmp_path / 'hf'}"])
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    ours, vocab, _ = load_model(bpe_run, "cpu")
    text = "First Citizen:\nBefore we proceed, café"
    assert tokenizer(text)["input_ids"] == data.encode(text, vocab)
    prompt = "First Citizen"
    new = ours.config.block_size - len(data.encode(prompt, vocab))
    expected = sample.generate_texts(ours, vocab, prompt, 1, new, 1.0, 1, 0, "cpu")[0]
    ids = theirs.generate(torch.tensor([data.encode(prompt, vocab)]), max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, pad_token_id=0)
    assert tokenizer.decode(ids[0]) == expected


def test_refusals_each_give_their_line(tiny_data, tiny_bpe_data, tiny_run, bpe_run, tmp_path, capsys, monkeypatch):
    def refused(main, args):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    text = f"--input={tiny_data / 'tiny.txt'}"
    assert "'vocab_size' sets the size of a BPE vocabulary" in refused(
        prepare_shakespeare.main, [text, f"--data_dir={tmp_path / 'a'}", "--vocab_size=300"])
    assert "'vocab_size' must be from 256 (the bytes alone) to 65,536" in refused(
        prepare_shakespeare.main, [text, f"--data_dir={tmp_path / 'b'}", "--tokenizer=bpe", "--vocab_size=100"])
    assert f"cannot start from {tiny_run}/best.pt: the model reads characters, and the data is BPE tokens" in \
        refused(train.main, tiny_train_args(tiny_bpe_data, tmp_path / "c", init_from=tiny_run))
    assert f"cannot start from {bpe_run}/best.pt: the model reads BPE tokens, and the data is characters" in \
        refused(train.main, tiny_train_args(tiny_data, tmp_path / "d", init_from=bpe_run))
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("train.bin", "val.bin", "meta.json"):
        (broken / name).write_bytes((tiny_bpe_data / name).read_bytes())
    assert f"{broken / 'tokenizer.json'} not found, and {broken / 'meta.json'} says the data is BPE tokens" in \
        refused(train.main, tiny_train_args(broken, tmp_path / "e"))
    (broken / "tokenizer.json").write_text((tiny_bpe_data / "tokenizer.json").read_text().replace("Ġthe", "Ġthy"))
    assert "is not the tokenizer the data was encoded with" in refused(train.main,
                                                                       tiny_train_args(broken, tmp_path / "f"))
    monkeypatch.setitem(__import__("sys").modules, "tokenizers", None)  # as if it were not installed
    assert "BPE tokens need the tokenizers package: pip install -r requirements-extras.txt" in refused(
        prepare_shakespeare.main, [text, f"--data_dir={tmp_path / 'g'}", "--tokenizer=bpe"])


def test_plot_and_compare_switch_to_bits_per_character_when_the_tokenizers_differ(tiny_run, bpe_run, tmp_path,
                                                                                  capsys):
    import compare
    import plot
    fig = plot.main([str(tiny_run), str(bpe_run), f"--output={tmp_path / 'mixed.png'}"])
    out = capsys.readouterr().out
    assert "the runs' tokenizers differ (BPE, 300 tokens, characters): plotted in val bits per character" in out
    ax = fig.axes[0]
    assert ax.get_ylabel() == "val bits per character" and "tokenizers differ" in ax.get_title()
    bpc = [json.loads(line)["val_bpc"] for line in (bpe_run / "metrics.jsonl").read_text().splitlines()]
    assert [list(line.get_ydata()) for line in ax.lines if line.get_linestyle() == "-"][1] == bpc
    assert not [line for line in ax.lines if line.get_linestyle() == "--"]  # no train loss: it is per token
    same = plot.plot_runs([tiny_run, tiny_run], tmp_path / "same.png")
    assert same.axes[0].get_ylabel().startswith("loss")
    report = compare.main([str(tiny_run), str(bpe_run), f"--output={tmp_path / 'compare'}", "--max_new_tokens=5",
                           "--inside=false"]).read_text()
    assert "The runs' tokenizers differ (tiny: characters; run: BPE, 300 tokens)" in report
    assert "| best val loss | bits/char |" in report
