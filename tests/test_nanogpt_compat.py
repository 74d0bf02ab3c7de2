"""sample.py reads checkpoints made by nanoGPT: its ckpt.pt layout and its meta.pkl vocabulary, loaded safely."""

import pickle

import pytest
import torch

import sample
import train
from conftest import RunsCodeWhenUnpickled
from model import GPT, GPTConfig

VOCAB = sorted(set("First Citizen:\nROMEO: hello, world!"))


def write_nanogpt_run(run, model, args, meta):
    """A run folder as nanoGPT leaves it: ckpt.pt of a torch.compile'd model, and its meta.pkl beside it."""
    run.mkdir()
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    state["_orig_mod.transformer.h.0.attn.bias"] = torch.tril(torch.ones(16, 16)).view(1, 1, 16, 16)  # its mask
    torch.save({"model": state, "model_args": args, "optimizer": {}, "iter_num": 250,
                "best_val_loss": torch.tensor(1.4697), "config": {"dataset": "shakespeare_char"}}, run / "ckpt.pt")
    with open(run / "meta.pkl", "wb") as f:
        pickle.dump(meta, f)


@pytest.fixture
def nanogpt_run(tmp_path):
    torch.manual_seed(0)
    args = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, bias=True, vocab_size=len(VOCAB), dropout=0.0)
    model = GPT(GPTConfig(**args)).eval()
    meta = {"vocab_size": len(VOCAB), "itos": dict(enumerate(VOCAB)), "stoi": {c: i for i, c in enumerate(VOCAB)}}
    write_nanogpt_run(tmp_path / "nanogpt", model, args, meta)
    return tmp_path / "nanogpt", model


def test_nanogpt_checkpoint_gives_the_same_logits(nanogpt_run):
    run, original = nanogpt_run
    ckpt = train.load_checkpoint(run / "ckpt.pt")
    assert ckpt["vocab"] == VOCAB and ckpt["iter_num"] == 250 and ckpt["best_val_loss"] == pytest.approx(1.4697)
    loaded = GPT(GPTConfig(**ckpt["model_config"]))
    loaded.load_state_dict(ckpt["model"])  # strict: every key matches once the prefix and the mask buffer are gone
    idx = torch.randint(len(VOCAB), (2, 16))
    assert torch.equal(loaded.eval()(idx)[0], original(idx)[0])


def test_sample_py_samples_from_a_nanogpt_checkpoint(nanogpt_run, capsys):
    run, _ = nanogpt_run
    texts = sample.main([f"--out_dir={run}", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=10"])
    assert texts[0].startswith("ROMEO:") and len(texts[0]) == len("ROMEO:") + 10
    assert set(texts[0]) <= set(VOCAB)


def test_resuming_a_nanogpt_checkpoint_is_refused_with_a_message(nanogpt_run, tiny_data, capsys):
    from conftest import tiny_train_args
    run, _ = nanogpt_run
    with pytest.raises(SystemExit):
        train.main(tiny_train_args(tiny_data, run, init_from="resume"))
    assert "is a nanoGPT checkpoint: sample.py reads it" in capsys.readouterr().err


def test_missing_meta_pkl_says_where_to_get_it(nanogpt_run, capsys):
    run, _ = nanogpt_run
    (run / "meta.pkl").unlink()
    with pytest.raises(SystemExit):
        sample.main([f"--out_dir={run}"])
    assert "copy data/shakespeare_char/meta.pkl from nanoGPT next to ckpt.pt" in capsys.readouterr().err


def test_a_meta_pkl_crafted_to_run_code_is_refused(nanogpt_run, tmp_path, capsys):
    run, _ = nanogpt_run
    marker = tmp_path / "code_ran"
    with open(run / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 1, "itos": RunsCodeWhenUnpickled(marker)}, f)
    with pytest.raises(SystemExit):
        sample.main([f"--out_dir={run}"])
    assert "is not a readable nanoGPT meta.pkl" in capsys.readouterr().err
    assert not marker.exists()
