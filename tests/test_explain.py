"""explain.py: the numbers behind each picture equal what the model computes (attention weights times values give
the attention output; the next character's probabilities are softmax(logits / T); the context curve averages to the
val loss; the lens of the last layer is the model), for several architecture options, a nanoGPT checkpoint and a BPE
run (whose report shows each token's text and says "token"); the report and its pictures are written; each bad input
is one line, with nothing written."""

import importlib.util
import json
import math

import pytest
import torch

import bpe
import explain
import prepare_shakespeare
import train
from checkpoint import load_model
from conftest import SHAKESPEARE, evaluate_on, tiny_train_args
from data import decode, encode, load_data
from model import GPT, GPTConfig
from runlog import read_metrics
from test_nanogpt_compat import nanogpt_model_for, write_nanogpt_run

OPTIONS = {  # together: each position encoding, norm and MLP, qk_norm, tied and untied
    "gpt2": dict(position_encoding="learned", norm="layernorm", mlp="gelu"),
    "modern": dict(position_encoding="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu", tie_weights=False),
    "sinusoidal": dict(position_encoding="sinusoidal", mlp="relu2", bias=True),
}


def small_model(**options) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, **options)).eval()


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_the_attention_weights_times_the_values_give_the_attention_output(options):
    model = small_model(**options)
    idx = torch.randint(20, (2, 12))
    traced = explain.trace(model, idx)
    rotary = (model.rope_cos[:12], model.rope_sin[:12]) if options["position_encoding"] == "rope" else None
    for layer, block in enumerate(model.transformer.h):
        x = block.ln_1(traced["streams"][layer])  # what the attention read: the block's input, normalised
        weights = traced["attention"][layer]  # (B, nh, T, T)
        _, _, v = block.attn.queries_keys_values(x, rotary)
        heads = (weights @ v).transpose(1, 2).reshape(2, 12, 32)  # (B, T, C)
        with torch.no_grad():
            torch.testing.assert_close(block.attn.c_proj(heads), block.attn(x, rotary=rotary), atol=1e-5, rtol=1e-4)
        assert torch.all(weights.triu(diagonal=1) == 0)  # causal: nothing from a later position
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 12))


def test_the_next_characters_probabilities_are_the_softmax_at_each_temperature():
    logits = torch.randn(20)
    vocab = [chr(97 + i) for i in range(20)]
    result = explain.next_char(logits, vocab, top_k=3)
    order = logits.argsort(descending=True)[:explain.SHOWN_CHARACTERS]
    assert result["characters"] == [vocab[i] for i in order]
    for temperature in explain.TEMPERATURES:
        probs = (logits / temperature).softmax(-1)
        at = result["temperatures"][str(temperature)]
        assert at["probabilities"] == pytest.approx(probs[order].tolist(), abs=1e-6)
        assert at["entropy"] == pytest.approx(-(probs * probs.log()).sum().item(), abs=1e-4)
        assert at["kept_by_top_k"] == pytest.approx(probs.topk(3).values.sum().item(), abs=1e-4)


def model_on(tiny_data, **options) -> GPT:
    vocab = load_data(tiny_data, "cpu", 16)[0]
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=len(vocab), block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                         **options)).eval()


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_the_context_curve_averages_to_the_val_loss_and_the_last_lens_is_the_model(tiny_data, options):
    model = model_on(tiny_data, **options)
    val_ids = load_data(tiny_data, "cpu", 16)[2]
    for max_tokens in (0, 320):  # the whole split (its last window shorter), and fixed windows
        val = explain.val_measures(model, val_ids, max_tokens, batch_size=8)
        expected = evaluate_on(model, val_ids, 16, batch_size=8, max_tokens=max_tokens)
        mean = sum(loss * n for loss, n in zip(val["context_loss"], val["context_count"])) / sum(val["context_count"])
        assert val["tokens"] == expected["val_loss_tokens"] == sum(val["context_count"])
        assert mean == pytest.approx(expected["val_loss"], rel=1e-5)
        assert val["layer_loss"][-1] == pytest.approx(expected["val_loss"], rel=1e-5)
        assert len(val["layer_loss"]) == len(val["layer_acc"]) == 3  # the embeddings and each block
        assert int(val["confusion"].sum()) == val["tokens"]


def test_explain_writes_the_report_its_numbers_and_every_picture(tiny_run, tmp_path):
    out = tmp_path / "explained"
    numbers = explain.main([f"--out_dir={tiny_run}", "--start=ROMEO:\nWhat", f"--output={out}", "--eval_tokens=0"])
    report = (out / "explain.md").read_text(encoding="utf-8")
    saved = json.loads((out / "explain.json").read_text(encoding="utf-8"))
    assert saved["layer_loss"] == pytest.approx(numbers["layer_loss"])
    assert {"context_loss", "layer_loss", "heads", "next_char"} <= saved.keys()
    assert len(saved["heads"]) == 1 and len(saved["heads"][0]) == 2  # tiny_run: 1 layer, 2 heads
    for picture in saved["pictures"].values():
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({picture})" in report
    assert len(saved["pictures"]) == 7 and "The prompt: 11 characters" in report
    written = [[m["iter_num"], m["sample"]] for m in read_metrics(tiny_run) if "sample" in m]  # in order
    assert saved["samples"] == written and len(written) == 4
    assert report.split("## 7. Text over training")[1].count("```text\n") == 4
    assert all(f"At iter {i}:\n\n```text\n{text}\n```" in report for i, text in written)
    model, _, _ = load_model(tiny_run, "cpu")
    assert saved["layer_loss"][-1] == pytest.approx(evaluate_on(model, load_data(
        json.loads((tiny_run / "config.json").read_text())["data_dir"], "cpu", 16)[2], 16, max_tokens=0)["val_loss"],
        rel=1e-5)


def test_a_prompt_longer_than_the_block_uses_its_last_block_and_says_so(tiny_run, tmp_path):
    out = tmp_path / "long"
    numbers = explain.main([f"--out_dir={tiny_run}", "--start=" + "To be, or not to be: " * 3, f"--output={out}"])
    assert numbers["prompt"] == ("To be, or not to be: " * 3)[-16:]
    assert "its last 16 characters (block_size) of 63" in (out / "explain.md").read_text(encoding="utf-8")


def test_a_nanogpt_checkpoint_is_explained_too(tiny_data, tmp_path):
    model, args, meta = nanogpt_model_for(tiny_data)
    write_nanogpt_run(tmp_path / "nanogpt", model.eval(), args, meta)
    numbers = explain.main([f"--out_dir={tmp_path / 'nanogpt'}", "--start=ROMEO:", f"--data_dir={tiny_data}",
                            "--eval_tokens=0"])
    expected = evaluate_on(model, load_data(tiny_data, "cpu", 16)[2], 16, max_tokens=0)["val_loss"]
    assert numbers["layer_loss"][-1] == pytest.approx(expected, rel=1e-5)
    assert "This run wrote no text at its evaluations" in (tmp_path / "nanogpt" / "explain" / "explain.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--start=ROMEO: §"], "the prompt has characters the model never saw: '§'"),
    (["--start="], "the prompt is empty"),
    (["--top_k=-1"], "'top_k' must be >= 0 (0 = no cut), got -1"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_run, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        explain.main([f"--out_dir={tiny_run}", f"--output={tmp_path / 'never'}", *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_a_run_folder_without_checkpoints_is_one_line(tiny_data, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        explain.main([f"--out_dir={tmp_path / 'empty'}"])
    assert exc.value.code == 2 and "has no best.pt or ckpt.pt" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "explain").exists()


def test_head_stats_name_a_previous_character_head():
    T = 6
    previous = torch.zeros(1, T, T)
    previous[0, 0, 0] = 1
    previous[0, torch.arange(1, T), torch.arange(T - 1)] = 1  # every position looks at the one before it
    (head,) = explain.head_stats(previous, "abcdef")
    assert head["previous"] == 1 and head["mean_distance"] == 1 and head["entropy"] == 0
    assert explain.role(head) == "previous character" and math.isclose(head["same"], 0)


# ----------------------------------------------------------------------------------------------------------------------
# A BPE run: subword tokens, shown as their text

needs_tokenizers = pytest.mark.skipif(importlib.util.find_spec("tokenizers") is None,
                                      reason="BPE tokens need the tokenizers package (requirements-extras.txt)")


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    """(data_dir, out_dir) of a tiny run on the first 20,000 characters of Tiny Shakespeare as 300 BPE tokens."""
    root = tmp_path_factory.mktemp("bpe")
    text_file = root / "tiny.txt"
    text_file.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    prepare_shakespeare.main([f"--input={text_file}", f"--data_dir={root / 'data'}", "--tokenizer=bpe",
                              "--vocab_size=300"])
    train.main(tiny_train_args(root / "data", root / "run", max_iters=10, eval_interval=10, warmup_iters=2))
    return root / "data", root / "run"


def test_a_bpe_tokens_text_is_shown_decoded_with_its_whitespace_visible():
    vocab = bpe.Vocabulary(["a", "Ġthe", "ĊĊ", "ĠĠ", "$"], tokenizer="{}")  # decoding needs no tokenizer
    assert explain.token_texts(vocab) == ["a", " the", "\n\n", "  ", "$"]
    assert [explain.shown(t) for t in explain.token_texts(vocab)] == ["a", "␣the", "\\n\\n", "␣␣", "$"]
    assert explain.label("$") == "\\$"  # matplotlib draws it as "$", never as the start of mathematics
    assert explain.noun(vocab) == "token" and explain.noun(["a", "b"]) == "character"
    assert explain.token_texts(["\n", " ", "a"]) == ["\n", " ", "a"]  # a character run's: its characters


def test_a_line_starts_after_the_last_token_that_holds_a_newline():
    starts = torch.zeros(1, 5, 5)
    starts[0, :3, 0] = 1  # the first line's positions look at its first token
    starts[0, 3:, 2] = 1  # the second line's at the token ":\n" that began it
    (head,) = explain.head_stats(starts, ["RO", "MEO", ":\n", "What", " light"])
    assert head["line_start"] == 1 and explain.role(head, "token") == "start of the line"
    assert explain.role({"previous": 0.9, "same": 0, "line_start": 0}, "token") == "previous token"


@needs_tokenizers
def test_a_bpe_run_is_explained_in_tokens_shown_as_their_text(bpe_run, tmp_path):
    data_dir, run_dir = bpe_run
    out, prompt = tmp_path / "explained", "ROMEO:\nWhat ✓"  # any text encodes: no unknown characters
    numbers = explain.main([f"--out_dir={run_dir}", f"--start={prompt}", f"--output={out}", "--eval_tokens=0"])
    report = (out / "explain.md").read_text(encoding="utf-8")
    saved = json.loads((out / "explain.json").read_text(encoding="utf-8"))
    for picture in saved["pictures"].values():
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({picture})" in report
    model, vocab, _ = load_model(run_dir, "cpu")
    ids = encode(prompt, vocab)
    assert isinstance(vocab, bpe.Vocabulary) and len(ids) <= 16  # ✓ is 3 byte tokens, shown as U+FFFD each
    assert f"The prompt: {len(ids)} tokens ({len(prompt)} characters)" in report and saved["prompt"] == prompt
    assert saved["prompt_tokens"] == [bpe.decode([i], vocab) for i in ids]
    assert any(len(text) > 1 for text in saved["prompt_tokens"])  # subwords: "hat" in "What"
    logits = model(torch.tensor([ids]))[0][0, -1].detach()
    order = logits.argsort(descending=True)[:explain.SHOWN_CHARACTERS].tolist()
    nxt = saved["next_char"]
    assert nxt["characters"] == [bpe.decode([i], vocab) for i in order]  # the text, not GPT-2's byte alphabet
    for temperature in explain.TEMPERATURES:
        probs = (logits / temperature).softmax(-1)
        assert nxt["temperatures"][str(temperature)]["probabilities"] == pytest.approx(probs[order].tolist(), abs=1e-6)
    header = report.split("## 2. The next token")[1].split("| temperature |")[1].split("\n")[0]
    assert header.endswith(" | ".join(f"`{explain.shown(c)}`" for c in nxt["characters"][:6]) + " |")
    assert not {"Ġ", "Ċ"} & set(report.split("## 7.")[0]) and "character" not in header
    for heading in ("## 5. Tokens", "| token | count | precision | recall | F1 |", "Positions are token positions",
                    "Only the ", "with 1 token of context", "reads the previous token"):
        assert heading in report
    assert saved["characters_per_token"] > 1 and all("Ġ" not in row["character"] for row in saved["characters"])
    val_ids = load_data(data_dir, "cpu", 16)[2]
    assert saved["layer_loss"][-1] == pytest.approx(evaluate_on(model, val_ids, 16, max_tokens=0)["val_loss"],
                                                    rel=1e-5)  # the last lens is the model itself
    traced = explain.trace(model, torch.tensor([ids]))
    for weights in traced["attention"]:  # (1, nh, T, T)
        assert torch.all(weights.triu(diagonal=1) == 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert numbers["characters_per_token"] == saved["characters_per_token"]


@needs_tokenizers
def test_a_bpe_prompt_longer_than_the_block_keeps_its_last_block_of_tokens(bpe_run, tmp_path):
    _, run_dir = bpe_run
    out, prompt = tmp_path / "long", "To be, or not to be: " * 5
    numbers = explain.main([f"--out_dir={run_dir}", f"--start={prompt}", f"--output={out}", "--eval_tokens=64"])
    _, vocab, _ = load_model(run_dir, "cpu")
    ids = encode(prompt, vocab)
    assert len(ids) > 16 and numbers["prompt"] == decode(ids[-16:], vocab) and len(numbers["prompt_tokens"]) == 16
    assert f"its last 16 tokens (block_size) of {len(ids)}" in (out / "explain.md").read_text(encoding="utf-8")


@needs_tokenizers
def test_a_bpe_run_measured_on_character_data_is_one_line(bpe_run, tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        explain.main([f"--out_dir={bpe_run[1]}", f"--data_dir={tiny_data}", f"--output={tmp_path / 'never'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "the model reads BPE tokens, and the data is characters; give --data_dir" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "never").exists()
