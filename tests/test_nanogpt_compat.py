"""sample.py reads checkpoints made by nanoGPT: its ckpt.pt layout and its meta.pkl vocabulary, loaded safely."""

import pickle

import pytest
import torch

import sample
import train
from checkpoint import load_checkpoint
from conftest import RunsCodeWhenUnpickled, tiny_train_args
from data import load_meta
from model import GPT, GPTConfig

VOCAB = sorted(set("First Citizen:\nROMEO: hello, world!"))


def write_nanogpt_run(run, model, args, meta, optimizer=None):
    """A run folder as nanoGPT leaves it: ckpt.pt of a torch.compile'd model, and its meta.pkl beside it."""
    run.mkdir()
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    state["_orig_mod.transformer.h.0.attn.bias"] = torch.tril(torch.ones(16, 16)).view(1, 1, 16, 16)  # its mask
    torch.save({"model": state, "model_args": args, "optimizer": optimizer or {}, "iter_num": 250,
                "best_val_loss": torch.tensor(1.4697),
                "config": {"dataset": "shakespeare_char", "batch_size": 8, "block_size": 16,
                           "gradient_accumulation_steps": 1}}, run / "ckpt.pt")
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
    ckpt = load_checkpoint(run / "ckpt.pt")
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


def nanogpt_optimizer_state(model, step: int, reverse_decay_params: bool = False) -> dict:
    """An AdamW state in nanoGPT's layout: parameters grouped by name into matrices (decayed) and the rest, after a
    step, with the step count set to `step`, saved by a PyTorch without the decoupled_weight_decay flag."""
    named = dict(model.named_parameters())
    decay = [p for p in named.values() if p.dim() >= 2]
    no_decay = [p for p in named.values() if p.dim() < 2]
    if reverse_decay_params:
        decay.reverse()
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.99))
    idx = torch.randint(model.config.vocab_size, (2, 8))
    model(idx, idx)[1].backward()
    optimizer.step()
    state = optimizer.state_dict()
    for moments in state["state"].values():
        moments["step"] = torch.tensor(float(step))
    for group in state["param_groups"]:
        del group["decoupled_weight_decay"]
    return state


def nanogpt_model_for(data_dir):
    """(model, nanoGPT model_args, meta.pkl content): a small nanoGPT model of data_dir's vocabulary."""
    vocab = load_meta(data_dir)["vocab"]
    torch.manual_seed(0)
    args = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, bias=True, vocab_size=len(vocab), dropout=0.0)
    meta = {"vocab_size": len(vocab), "itos": dict(enumerate(vocab)), "stoi": {c: i for i, c in enumerate(vocab)}}
    return GPT(GPTConfig(**args)), args, meta


@pytest.fixture
def nanogpt_run_on_tiny_data(tmp_path, tiny_data):
    """A nanoGPT run at iter 250 trained on tiny_data's vocabulary, with its optimizer state."""
    return (tmp_path / "nanogpt", *nanogpt_model_for(tiny_data))


def test_resuming_a_nanogpt_checkpoint_continues_its_optimizer(nanogpt_run_on_tiny_data, tiny_data, capsys):
    run, model, args, meta = nanogpt_run_on_tiny_data
    write_nanogpt_run(run, model, args, meta, optimizer=nanogpt_optimizer_state(model, step=250))
    shape = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, bias=True)
    summary = train.main(tiny_train_args(tiny_data, run, init_from="resume", max_iters=260, **shape))
    assert "holds no random-number states (nanoGPT saves none)" in capsys.readouterr().out
    assert summary["iter_num"] == 260 and summary["status"] == "finished"
    ckpt = load_checkpoint(run / "ckpt.pt")  # now in this harness's format
    assert "format_version" in ckpt and ckpt["iter_num"] == 260
    steps = {moments["step"].item() for moments in ckpt["optimizer"]["state"].values()}
    assert steps == {260.0}  # AdamW's bias correction continues from nanoGPT's 250 steps
    assert all(group["decoupled_weight_decay"] for group in ckpt["optimizer"]["param_groups"])


def test_a_nanogpt_optimizer_state_in_another_parameter_order_is_refused(nanogpt_run_on_tiny_data, tiny_data, capsys):
    run, model, args, meta = nanogpt_run_on_tiny_data
    write_nanogpt_run(run, model, args, meta, optimizer=nanogpt_optimizer_state(model, 250, reverse_decay_params=True))
    shape = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, bias=True)
    with pytest.raises(SystemExit):
        train.main(tiny_train_args(tiny_data, run, init_from="resume", max_iters=260, **shape))
    assert "the checkpoint's optimizer state does not fit the model" in capsys.readouterr().err


def test_resuming_a_nanogpt_checkpoint_without_optimizer_state_is_refused(nanogpt_run, tiny_data, capsys):
    run, _ = nanogpt_run
    with pytest.raises(SystemExit):
        train.main(tiny_train_args(tiny_data, run, init_from="resume"))
    assert "holds no optimizer state, so it cannot be resumed" in capsys.readouterr().err


def test_missing_meta_pkl_says_where_to_get_it(nanogpt_run, capsys):
    run, _ = nanogpt_run
    (run / "meta.pkl").unlink()
    with pytest.raises(SystemExit):
        sample.main([f"--out_dir={run}"])
    assert "copy data/shakespeare_char/meta.pkl from nanoGPT next to ckpt.pt" in capsys.readouterr().err


def test_meta_pkl_is_found_in_the_data_folder_of_the_nanogpt_checkout_holding_the_run(nanogpt_run, tmp_path,
                                                                                        monkeypatch):
    """nanoGPT's sample.py reads data/<dataset>/meta.pkl from its checkout's root; a run there is found from any
    folder, here a run nested two folders deep and sampled from elsewhere."""
    run, _ = nanogpt_run
    checkout = tmp_path / "nanoGPT"
    (checkout / "data" / "shakespeare_char").mkdir(parents=True)
    (run / "meta.pkl").rename(checkout / "data" / "shakespeare_char" / "meta.pkl")
    nested = checkout / "runs" / "out-shakespeare-char"
    nested.parent.mkdir()
    run.rename(nested)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    texts = sample.main([f"--out_dir={nested}", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=5"])
    assert texts[0].startswith("ROMEO:")


def test_a_meta_pkl_crafted_to_run_code_is_refused(nanogpt_run, tmp_path, capsys):
    run, _ = nanogpt_run
    marker = tmp_path / "code_ran"
    with open(run / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 1, "itos": RunsCodeWhenUnpickled(marker)}, f)
    with pytest.raises(SystemExit):
        sample.main([f"--out_dir={run}"])
    assert "is not a readable nanoGPT meta.pkl" in capsys.readouterr().err
    assert not marker.exists()
