import json
import math
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import runlog
import sample
import train
from conftest import HUNG_S, REPO, RunsCodeWhenUnpickled, evaluate_on, tiny_train_args, wait_until
from checkpoint import RunState
from evaluate import CORRECT, PREDICTED, TARGETS, TOP5, accuracies, classification_metrics
from model import GPT, GPTConfig
from optim import make_optimizer
from train import TrainConfig


def read_metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_writes_its_records_and_learns(tiny_run):
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["device"] == "cpu" and config["dtype"] == "float32" and config["compile"] is False
    assert config["n_layer"] == 1 and config["lr_decay_iters"] == 40  # -1 resolved to max_iters
    run = json.loads((tiny_run / "run.json").read_text())
    assert {"argv", "git_commit", "torch_version", "device_name", "params"} <= run.keys()
    assert run["torch_version"] == torch.__version__

    metrics = read_metrics(tiny_run)
    assert [m["iter_num"] for m in metrics] == [0, 10, 20, 30, 40]
    assert set(runlog.METRICS_KEYS) == metrics[0].keys() == {  # "sample": at iter 0 and now and then
        "iter_num", "train_loss", "val_loss", "val_ppl", "val_bpc", "val_acc", "val_top5", "lr", "elapsed_s",
        "eval_s", "train_s", "tokens_seen", "val_loss_tokens", "train_loss_tokens", "sample"}
    assert all(m["val_ppl"] == pytest.approx(math.exp(m["val_loss"]), rel=1e-4) for m in metrics)
    assert all(m["val_bpc"] == pytest.approx(m["val_loss"] / math.log(2), rel=1e-5) for m in metrics)
    assert all(0 <= m["val_acc"] <= m["val_top5"] <= 1 for m in metrics)
    assert metrics[-1]["val_acc"] > metrics[0]["val_acc"]
    assert metrics[-1]["tokens_seen"] == 40 * 8 * 16
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 0.5
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] - 0.5

    summary = json.loads((tiny_run / "summary.json").read_text())
    best_row = min(metrics, key=lambda m: m["val_loss"])
    assert summary["status"] == "finished" and summary["iter_num"] == 40 and summary["params"] == run["params"]
    assert (summary["best_val_loss"], summary["best_iter"]) == (best_row["val_loss"], best_row["iter_num"])
    assert summary["final"]["val_acc"] == metrics[-1]["val_acc"]
    assert 0 < summary["final"]["f1_macro"] <= 1 and 0 < summary["final"]["precision_macro"] <= 1
    assert summary["gap_at_end"] == pytest.approx(metrics[-1]["val_loss"] - metrics[-1]["train_loss"], abs=1e-6)
    assert summary["tokens_seen"] == 40 * 8 * 16 and summary["elapsed_s"] > 0 and summary["tokens_per_s"] > 0

    ckpt = torch.load(tiny_run / "ckpt.pt", weights_only=True)
    best = torch.load(tiny_run / "best.pt", weights_only=True)
    assert ckpt["iter_num"] == 40 and "optimizer" in ckpt and "optimizer" not in best
    assert best["best_val_loss"] == pytest.approx(min(m["val_loss"] for m in metrics), abs=1e-5)
    assert not any(k.startswith("_orig_mod.") for k in best["model"])
    model = GPT(GPTConfig(**best["model_config"]))
    model.load_state_dict(best["model"])
    assert len(best["vocab"]) == best["model_config"]["vocab_size"]


def test_resume_continues_the_same_loss_curve(tmp_path, tiny_data):
    # 2N iterations in one go, and N iterations resumed for N more, with dropout on: the same losses, to the bit.
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train.main(tiny_train_args(tiny_data, straight, max_iters=40, eval_interval=5))
    # The first half must use the full run's schedule, so it decays over 40 steps, not 20.
    train.main(tiny_train_args(tiny_data, halves, max_iters=20, lr_decay_iters=40, eval_interval=5))
    assert torch.load(halves / "ckpt.pt", weights_only=True)["iter_num"] == 20
    result = train.main(tiny_train_args(tiny_data, halves, max_iters=40, lr_decay_iters=40, eval_interval=5,
                                        init_from="resume"))
    assert result["iter_num"] == 40
    # the text at its evaluations too: sampling draws from its own generator, not training's random state
    expected = [(m["iter_num"], m["train_loss"], m["val_loss"], m.get("sample")) for m in read_metrics(straight)]
    resumed = [(m["iter_num"], m["train_loss"], m["val_loss"], m.get("sample")) for m in read_metrics(halves)]
    assert len(expected) == 9
    assert resumed == expected


def test_evaluations_0_1_2_4_8_and_the_last_write_the_text_the_model_samples_then(tiny_run, tiny_data, tmp_path):
    metrics = read_metrics(tiny_run)  # evaluations every 10 steps, to 40
    written = [m for m in metrics if "sample" in m]
    assert [m["iter_num"] for m in written] == [0, 10, 20, 40]  # evaluations 0, 1, 2 and 4, which is also the last
    assert all(m["sample"].startswith("\n") and len(m["sample"]) == 1 + 100 for m in written)
    assert len({m["sample"] for m in written}) == 4  # the same prompt and seed: the model made each one different
    pairs = [(m["iter_num"], m["sample"]) for m in written]
    assert runlog.samples_over_training(runlog.read_metrics(tiny_run)) == pairs
    # the last one is what sample.py's generation gives from the final weights, with the run's seed
    ckpt = torch.load(tiny_run / "ckpt.pt", weights_only=True)
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    assert metrics[-1]["sample"] == sample.generate_texts(model.eval(), ckpt["vocab"], "\n", 1, 100, 0.8, 0, 1337,
                                                          "cpu")[0]
    train.main(tiny_train_args(tiny_data, tmp_path / "quiet", max_iters=10, eval_sample_chars=0))
    assert all("sample" not in m for m in read_metrics(tmp_path / "quiet"))


def test_a_sample_is_due_at_evaluations_0_1_2_4_8_and_at_the_end():
    due = [it for it in range(0, 3001, 100) if sample.sample_due(it, 100, ending=False)]
    assert due == [0, 100, 200, 400, 800, 1600]
    assert sample.sample_due(3000, 100, ending=True) and sample.sample_due(1234, 100, ending=True)
    assert not sample.sample_due(1225, 100, ending=False)  # an evaluation near target_loss, before the end


def test_get_batch_targets_are_inputs_shifted_by_one():
    data = torch.arange(100)
    x, y = train.get_batch(data, block_size=8, batch_size=5, generator=torch.Generator().manual_seed(0), device="cpu")
    assert x.shape == y.shape == (5, 8)
    assert torch.equal(y, x + 1)
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)  # contiguous windows


def test_validation_loss_covers_the_whole_split_deterministically():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=7, n_layer=1, n_head=1, n_embd=8, dropout=0.0))
    data = torch.randint(7, (43,))
    got = evaluate_on(model, data, block_size=8, batch_size=2)
    # By hand: 42 targets, five full windows of 8 and one window of 2, every target counted once.
    losses, hits, top5 = [], 0, 0
    for start in range(0, 42, 8):
        x, y = data[start:min(start + 8, 42)], data[start + 1:min(start + 9, 43)]
        logits, _ = model(x[None])
        losses.append(F.cross_entropy(logits[0], y, reduction="none"))
        hits += (logits[0].argmax(-1) == y).sum().item()
        top5 += sum(y[i].item() in logits[0, i].topk(5).indices.tolist() for i in range(len(y)))
    expected = torch.cat(losses)
    assert len(expected) == 42 == got["val_loss_tokens"]
    assert got["val_loss"] == pytest.approx(expected.mean().item(), rel=1e-6)
    assert accuracies(got["val_counts"]) == pytest.approx((hits / 42, top5 / 42))
    counts = got["val_counts"]
    assert counts[CORRECT].sum() == hits and counts[TOP5].sum() == top5
    assert counts[TARGETS].sum() == counts[PREDICTED].sum() == 42
    assert torch.equal(counts[TARGETS], torch.bincount(data[1:], minlength=7))
    again = evaluate_on(model, data, block_size=8, batch_size=4)
    assert again["val_loss"] == pytest.approx(got["val_loss"], rel=1e-12)
    assert torch.equal(again["val_counts"], got["val_counts"])


def test_macro_precision_recall_f1_by_hand():
    # rows: target a, b, c; columns: predicted a, b, c
    confusion = torch.tensor([[3, 1, 0],
                              [2, 2, 0],
                              [1, 0, 0]])
    # precision: a 3/6, b 2/3, c never predicted -> 0; recall: a 3/4, b 2/4, c 0/1
    precision = [3 / 6, 2 / 3, 0.0]
    recall = [3 / 4, 2 / 4, 0.0]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall)]
    def counts(confusion):  # prediction_counts's rows: correct, in the top 5 (unused here), target, predicted
        return torch.stack([confusion.diagonal(), confusion.diagonal(), confusion.sum(dim=1), confusion.sum(dim=0)])
    got = classification_metrics(counts(confusion))
    assert got["precision_macro"] == pytest.approx(sum(precision) / 3)
    assert got["recall_macro"] == pytest.approx(sum(recall) / 3)
    assert got["f1_macro"] == pytest.approx(sum(f1) / 3)
    # A character of the vocabulary that never occurs as a target does not enter the average.
    padded = torch.zeros(4, 4, dtype=torch.long)
    padded[:3, :3] = confusion
    assert classification_metrics(counts(padded))["recall_macro"] == pytest.approx(sum(recall) / 3)


def test_bits_per_character_and_perplexity_by_hand(tiny_run):
    row = read_metrics(tiny_run)[-1]
    assert row["val_bpc"] == pytest.approx(row["val_loss"] / 0.6931471805599453, rel=1e-5)
    assert row["val_ppl"] == pytest.approx(2 ** row["val_bpc"], rel=1e-4)


def test_early_stopping_stops_after_patience_evaluations(tiny_data, tmp_path):
    out = tmp_path / "early"
    # A learning rate this high makes the val loss stop improving after the first evaluations.
    summary = train.main(tiny_train_args(tiny_data, out, max_iters=400, eval_interval=5, learning_rate=0.5,
                                         min_lr=0.5, warmup_iters=0, early_stop_patience=2))
    metrics = read_metrics(out)
    assert summary["status"] == "early_stopped" and summary["iter_num"] < 400
    best_index = [m["iter_num"] for m in metrics].index(summary["best_iter"])
    assert len(metrics) == best_index + 1 + 2  # exactly `patience` evaluations after the best
    assert all(m["val_loss"] >= summary["best_val_loss"] for m in metrics[best_index + 1:])
    assert json.loads((out / "summary.json").read_text())["status"] == "early_stopped"


def test_summary_flags_a_val_loss_that_rose_after_its_best(tmp_path):
    def summary_of(curve):
        rows = [{"iter_num": i, "train_loss": t, "val_loss": v, "val_ppl": math.exp(v), "val_bpc": v / math.log(2),
                 "val_acc": 0.5, "val_top5": 0.9, "tokens_seen": i * 10} for i, t, v in curve]
        (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        return runlog.finish(tmp_path, "finished", {"precision_macro": 0.5, "recall_macro": 0.4, "f1_macro": 0.45},
                             params=1, max_iters=20, max_time=0.0, state=RunState(elapsed_s=1.0),
                             tokens_per_s=10.0)

    summary = summary_of([(0, 4.0, 4.0), (10, 1.5, 1.60), (20, 1.2, 1.65)])
    assert summary["overfit"] is True and summary["val_rise_after_best"] == pytest.approx(0.05)
    assert summary["best_iter"] == 10 and summary["gap_at_best"] == pytest.approx(0.10)
    assert summary["gap_at_end"] == pytest.approx(0.45)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary_of([(0, 4.0, 4.0), (10, 1.5, 1.60), (20, 1.2, 1.605)])["overfit"] is False  # within the margin


def test_learning_rate_schedule():
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110)
    lr = lambda it: train.get_lr(it, cfg)  # noqa: E731
    assert lr(0) == pytest.approx(1 / 11)
    assert lr(9) == pytest.approx(10 / 11)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.55)  # halfway through the cosine
    assert lr(110) == lr(500) == pytest.approx(0.1)
    assert all(lr(i) >= lr(i + 1) for i in range(10, 120))


@pytest.mark.parametrize("schedule, at_60, at_95", [
    ("linear", 0.55, 0.235),  # a straight line from 1.0 at iter 10 to 0.1 at iter 110
    ("constant", 1.0, 1.0),
    ("wsd", 1.0, 0.775),  # flat until iter 90 (the last 20% of the 100 decay steps), then a line to 0.1
])
def test_other_learning_rate_schedules(schedule, at_60, at_95):
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110, lr_schedule=schedule,
                      wsd_decay_fraction=0.2)
    lr = lambda it: train.get_lr(it, cfg)  # noqa: E731
    assert lr(0) == pytest.approx(1 / 11) and lr(10) == pytest.approx(1.0)  # the same warmup for every schedule
    assert (lr(60), lr(95)) == (pytest.approx(at_60), pytest.approx(at_95))
    assert lr(110) == lr(500) == pytest.approx(1.0 if schedule == "constant" else 0.1)
    assert all(lr(i) >= lr(i + 1) for i in range(10, 120))


def test_label_smoothing_mixes_in_the_uniform_distribution():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16, dropout=0.0))
    x, y = torch.randint(11, (2, 8)), torch.randint(11, (2, 8))
    logits, plain = model(x, y)
    _, smoothed = model(x, y, label_smoothing=0.1)
    log_probs = F.log_softmax(logits.float(), dim=-1)
    uniform_term = -log_probs.mean(dim=-1).mean()  # cross-entropy against the uniform distribution
    torch.testing.assert_close(smoothed, 0.9 * plain + 0.1 * uniform_term)


def test_weight_decay_only_on_matrices():
    model = GPT(GPTConfig(block_size=8, vocab_size=7, n_layer=1, n_head=1, n_embd=8, bias=True))
    optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.99), fused=False)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_bfloat16_autocast_path_trains_on_cpu(tiny_data, tmp_path):
    """The mixed-precision code path (autocast, float32 loss) runs here on a CPU; on a GPU it is the default."""
    out = tmp_path / "bf16"
    train.main(tiny_train_args(tiny_data, out, dtype="bfloat16", max_iters=20))
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    metrics = read_metrics(out)
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 0.3


def test_compile_mode_reaches_torch_compile(tiny_data, tmp_path, monkeypatch):
    """The mode goes to torch.compile for the model and for the weight average's copy (the compile itself is faked:
    on a CPU it takes half a minute, and CUDA graphs need a GPU)."""
    modes = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: modes.append(mode) or model)
    out = tmp_path / "mode"
    train.main(tiny_train_args(tiny_data, out, compile="true", compile_mode="reduce-overhead", ema=0.5, max_iters=10))
    assert modes == ["reduce-overhead", "reduce-overhead"]
    assert json.loads((out / "config.json").read_text())["compile_mode"] == "reduce-overhead"


def test_a_diverging_run_stops_with_one_line_and_writes_no_checkpoint(tiny_data, tmp_path, capsys):
    out = tmp_path / "nan"
    with pytest.raises(SystemExit) as exc:
        train.main(tiny_train_args(tiny_data, out, learning_rate=1e9, min_lr=1e9, warmup_iters=0))
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "became nan at iter 5 (learning rate 1e+09): training diverged" in err[0]
    assert not (out / "best.pt").exists() and not (out / "ckpt.pt").exists()


def test_divergence_never_overwrites_the_saved_checkpoints(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(tiny_train_args(tiny_data, out, max_iters=20))
    before = {name: (out / name).read_bytes() for name in ("best.pt", "ckpt.pt")}
    with pytest.raises(SystemExit):
        train.main(tiny_train_args(tiny_data, out, max_iters=40, init_from="resume", learning_rate=1e9,
                                   min_lr=1e9, eval_interval=3, log_interval=100))
    assert "still holds iter 20's weights" in capsys.readouterr().err  # caught at the evaluation at iter 21
    assert {name: (out / name).read_bytes() for name in before} == before


def test_a_checkpoint_crafted_to_run_code_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    run = tmp_path / "evil_run"
    run.mkdir()
    torch.save({"format_version": 1, "model": RunsCodeWhenUnpickled(marker)}, run / "best.pt")
    with pytest.raises(SystemExit) as exc:
        sample.main([f"--out_dir={run}"])
    assert exc.value.code == 2
    assert "was refused: it holds Python objects other than tensors" in capsys.readouterr().err
    assert not marker.exists()


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tiny_data, tmp_path):
    out = tmp_path / "interrupted"
    args = tiny_train_args(tiny_data, out, max_iters=100000, eval_interval=50)
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_until(lambda: (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text(), proc,
               "train.py did not start training")  # training has begun
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=HUNG_S)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "Resume with: python train.py" in stdout and "--init_from=resume" in stdout
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert 0 <= ckpt["iter_num"] < 100000 and "optimizer" in ckpt  # the signal may land before the first step


def test_perplexity_of_a_far_from_trained_model_is_infinite_not_an_error():
    assert runlog.perplexity(math.log(5.0)) == pytest.approx(5.0)
    assert runlog.perplexity(1e4) == float("inf")  # math.exp would overflow here


def test_a_run_with_the_non_default_options_learns_and_samples(tiny_data, tmp_path):
    out = tmp_path / "run"
    train.main(tiny_train_args(tiny_data, out, lr_schedule="constant", label_smoothing=0.1, norm="rmsnorm",
                               qk_norm="true", tie_weights="false", mlp="swiglu", position_encoding="rope",
                               dtype="bfloat16"))  # bf16 autocast: rope's tables must follow q's dtype
    metrics = read_metrics(out)
    assert {m["lr"] for m in metrics if m["iter_num"] > 5} == {3e-3}  # warmup is 5 steps; no decay after it
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 0.5  # plain cross-entropy, lower than at the start
    (text,) = sample.main([f"--out_dir={out}", "--num_samples=1", "--max_new_tokens=20", "--device=cpu"])
    assert len(text) == 21  # the checkpoint rebuilds the same architecture


def test_resume_with_another_architecture_option_is_refused(tiny_run, tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with pytest.raises(SystemExit):
        train.main(tiny_train_args(tiny_data, run, init_from="resume", max_iters=60, norm="rmsnorm",
                                   tie_weights="false"))
    err = capsys.readouterr().err
    assert "its model has norm layernorm, this run asks for rmsnorm (set --norm=layernorm" in err
    assert "its model has tie_weights True, this run asks for False" in err


def test_eval_at_start_false_skips_only_the_untrained_models_evaluation(tiny_data, tmp_path):
    summary = train.main(tiny_train_args(tiny_data, tmp_path / "run", max_iters=20, eval_interval=10,
                                         eval_at_start=False))
    assert [m["iter_num"] for m in read_metrics(tmp_path / "run")] == [10, 20]
    assert summary["best_iter"] in (10, 20) and (tmp_path / "run" / "best.pt").exists()
