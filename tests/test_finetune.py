"""Starting a run from a trained one (init_from=PATH): the source's weights, shape and vocabulary, the run record,
frozen layers, eval_only, nanoGPT runs as sources, and resuming a fine-tuning run."""

import json

import numpy as np
import pytest
import torch

import compare
import finetune
import prepare_shakespeare
import sample
import train
from checkpoint import load_checkpoint, load_model
from conftest import SHAKESPEARE, evaluate_on, tiny_train_args
from data import decode, encode, load_meta, remap_ids
from model import SHAPE_KEYS
from test_nanogpt_compat import nanogpt_model_for, write_nanogpt_run

NEW_CHARACTERS = "Zoë ✓ ∑"


def finetune_args(data_dir, out_dir, source, **overrides):
    """tiny_train_args for a run from source, without the shape keys (they come from its checkpoint) unless given."""
    args = tiny_train_args(data_dir, out_dir, init_from=source, **overrides)
    return [a for a in args if a[2:].split("=")[0] not in SHAPE_KEYS or a[2:].split("=")[0] in overrides]


def read_metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def prepare(tmp_path_factory, name, text) -> "Path":  # noqa: F821
    root = tmp_path_factory.mktemp(name)
    (root / "text.txt").write_text(text, encoding="utf-8")
    prepare_shakespeare.main([f"--input={root / 'text.txt'}", f"--data_dir={root}"])
    return root


@pytest.fixture(scope="module")
def known_data(tmp_path_factory, tiny_data):
    """Text after tiny_data's, cut to the characters tiny_data has: a smaller vocabulary, in other ids."""
    vocab = set(load_meta(tiny_data)["vocab"])
    text = "".join(ch for ch in SHAKESPEARE.read_text(encoding="utf-8")[20_000:30_000] if ch in vocab)
    return prepare(tmp_path_factory, "known", text)


@pytest.fixture(scope="module")
def new_data(tmp_path_factory):
    """Text after tiny_data's, with characters tiny_data never had, in both splits."""
    text = SHAKESPEARE.read_text(encoding="utf-8")[20_000:30_000]
    return prepare(tmp_path_factory, "new", "\n".join(f"{line} {NEW_CHARACTERS}" for line in text.split("\n")))


def val_loss_of(model, vocab, data_dir, block_size=16, batch_size=8) -> float:
    """model's val loss on data_dir's val split, its text encoded with the model's own vocabulary."""
    meta = load_meta(data_dir)
    text = decode(np.fromfile(data_dir / "val.bin", dtype=np.uint16).tolist(), meta["vocab"])
    ids = torch.tensor(encode(text, vocab))
    return evaluate_on(model.eval(), ids, block_size, batch_size)["val_loss"]


def test_the_first_evaluation_is_the_source_models_val_loss_on_the_new_data(tiny_run, known_data, tmp_path):
    out = tmp_path / "finetuned"
    source_files = {path.name: path.stat().st_mtime_ns for path in tiny_run.iterdir()}
    summary = train.main(finetune_args(known_data, out, tiny_run, max_iters=10, learning_rate=1e-3))
    model, vocab, info = load_model(tiny_run, "cpu")
    expected = val_loss_of(model, vocab, known_data)
    assert read_metrics(out)[0]["val_loss"] == round(expected, 6)
    assert {path.name: path.stat().st_mtime_ns for path in tiny_run.iterdir()} == source_files  # left as it was
    assert summary["started_from"] == {"path": str(tiny_run / "best.pt"), "iter_num": info["iter_num"],
                                       "best_val_loss": info["best_val_loss"], "added_characters": []}
    assert json.loads((out / "run.json").read_text())["started_from"] == summary["started_from"]
    config = json.loads((out / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["block_size"]) == (1, 32, 16)  # the source's, not defaults
    assert config["init_from"] == str(tiny_run) and config["learning_rate"] == 1e-3
    assert (compare.origin(out), compare.origin(tiny_run)) == (str(tiny_run / "best.pt"), "scratch")  # its report
    # eval_only measures the same model the same way, unrounded, and writes nothing.
    result = train.main(finetune_args(known_data, tmp_path / "nothing", tiny_run, eval_only=True))
    assert result["val_loss"] == expected
    assert not (tmp_path / "nothing").exists()


def test_new_characters_get_new_ids_and_old_ones_keep_their_weights(tiny_data, new_data, tmp_path):
    source = tmp_path / "untied"
    train.main(tiny_train_args(tiny_data, source, tie_weights="false", max_iters=10))
    given = set()
    cfg, pretrained = finetune.from_checkpoint(train.load_config(finetune_args(new_data, tmp_path / "ft", source),
                                                                 given), given)
    data_vocab = load_meta(new_data)["vocab"]
    vocab, started_from = finetune.model_vocab(pretrained, data_vocab, cfg.freeze_layers)
    old = load_checkpoint(source / "best.pt")
    added = sorted(set(NEW_CHARACTERS) - set(old["vocab"]))
    assert vocab == old["vocab"] + added and started_from["added_characters"] == added
    model, _ = train.build(cfg, len(vocab), "cpu", weights=pretrained.weights)
    weights = model.state_dict()
    assert weights.keys() == old["model"].keys()
    for name, tensor in old["model"].items():
        if name in finetune.VOCAB_ROWS:  # the token embedding and the (untied) output layer
            assert weights[name].shape == (len(vocab), 32)
            assert torch.equal(weights[name][:len(old["vocab"])], tensor)
            new_rows = weights[name][len(old["vocab"]):]
            assert 0.01 < new_rows.std().item() < 0.03  # a fresh model's initialisation: normal, std 0.02
        else:
            assert torch.equal(weights[name], tensor), name
    ids = torch.from_numpy(np.fromfile(new_data / "train.bin", dtype=np.uint16))
    remapped = remap_ids(ids, data_vocab, vocab)
    assert remapped.dtype == torch.uint16 and decode(remapped[:300].tolist(), vocab) == decode(ids[:300].tolist(),
                                                                                              data_vocab)
    assert torch.equal(remap_ids(ids.long(), data_vocab, vocab), remapped.long())  # int64 splits map the same


def test_a_key_that_would_change_the_shape_is_refused_and_the_rest_are_the_new_runs(tiny_run, known_data, tmp_path,
                                                                                     capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(finetune_args(known_data, tmp_path / "ft", tiny_run, n_layer=2, n_embd=64, norm="layernorm"))
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [f"error: '{key}' is {value} here, but the model in {tiny_run / 'best.pt'} has {key} {saved}: a run "
                   f"from a trained model keeps its shape; leave {key} out or set --{key}={saved}"
                   for key, value, saved in (("n_layer", 2, 1), ("n_embd", 64, 32))]  # the same norm is fine
    assert not (tmp_path / "ft").exists()
    given = set()
    cfg = train.load_config(finetune_args(known_data, tmp_path / "ft", tiny_run, n_layer=1, dropout=0.3), given)
    cfg, _ = finetune.from_checkpoint(cfg, given)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.dropout) == (1, 2, 32, 16, 0.3)


def test_a_nanogpt_run_works_as_a_source(tmp_path, tiny_data):
    vocab = load_meta(tiny_data)["vocab"]
    model, args, meta = nanogpt_model_for(tiny_data)
    write_nanogpt_run(tmp_path / "nanogpt", model, args, meta)  # nanoGPT writes ckpt.pt only, with meta.pkl beside
    out = tmp_path / "ft"
    summary = train.main(finetune_args(tiny_data, out, tmp_path / "nanogpt", max_iters=10))
    assert read_metrics(out)[0]["val_loss"] == round(val_loss_of(model, vocab, tiny_data), 6)
    assert summary["started_from"]["path"] == str(tmp_path / "nanogpt" / "ckpt.pt")
    assert summary["started_from"]["iter_num"] == 250
    assert json.loads((out / "config.json").read_text())["bias"] is True  # nanoGPT's shape, not our default


def test_resuming_a_finetuning_run_continues_it_exactly(tiny_run, new_data, tmp_path):
    # As for any run (test_train.py): 20 steps straight, and 10 steps resumed for 10 more, give the same losses. The
    # vocabulary grew, and the shape keys are never given: resuming takes both from the checkpoint again.
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    common = dict(eval_interval=5, lr_decay_iters=20, learning_rate=1e-3, warmup_iters=2)
    train.main(finetune_args(new_data, straight, tiny_run, max_iters=20, **common))
    train.main(finetune_args(new_data, halves, tiny_run, max_iters=10, **common))
    resumed = train.main(finetune_args(new_data, halves, tiny_run, max_iters=20, **common) + ["--init_from=resume"])
    losses = [[(m["iter_num"], m["train_loss"], m["val_loss"]) for m in read_metrics(run)]
              for run in (straight, halves)]
    assert len(losses[0]) == 5 and losses[1] == losses[0]
    added = resumed["started_from"]["added_characters"]
    assert added == sorted(set(NEW_CHARACTERS) - set(load_checkpoint(tiny_run / "best.pt")["vocab"])) != []
    assert resumed["started_from"]["path"] == str(tiny_run / "best.pt")  # the record still names the source
    assert load_checkpoint(halves / "best.pt")["vocab"][-len(added):] == added
    (text,) = sample.main([f"--out_dir={halves}", "--start=✓", "--num_samples=1", "--max_new_tokens=5",
                           "--device=cpu"])
    assert text.startswith("✓") and len(text) == 6


def test_frozen_layers_keep_the_source_weights(tiny_run, known_data, tmp_path):
    out = tmp_path / "frozen"
    train.main(finetune_args(known_data, out, tiny_run, max_iters=10, freeze_layers=1))
    before, after = load_checkpoint(tiny_run / "best.pt")["model"], load_checkpoint(out / "ckpt.pt")["model"]
    frozen = [name for name in before if name.startswith(("transformer.wte", "transformer.wpe", "transformer.h.0.",
                                                          "lm_head"))]  # lm_head is tied to wte
    assert frozen and all(torch.equal(before[name], after[name]) for name in frozen)
    assert not torch.equal(before["transformer.ln_f.weight"], after["transformer.ln_f.weight"])  # the rest trained

