"""What can only break on a CUDA GPU: bf16 and fp16 training, torch.compile and CUDA graphs there, checkpoints that
move between the GPU and the CPU, and torchrun on NCCL. Every test here skips on a machine without CUDA; `.ci/gpu`
runs them first when a GPU is lent.
"""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import sample
import train
from checkpoint import load_model
from conftest import REPO, tiny_train_args
from devices import mixed_precision
from runlog import read_metrics, read_summary

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = dict(n_layer=2, n_head=2, n_embd=64, block_size=32, batch_size=16, dropout=0.0, learning_rate=3e-3)


def step_losses(dtype: str, compiled: bool, steps: int = 30) -> list[float]:
    """The training loss of each of the first steps of a tiny model on an easy text, on the GPU in dtype, through
    train.py's own build and train_step."""
    cfg = replace(train.TrainConfig(), **TINY)
    torch.manual_seed(0)
    model, optimizer = train.build(cfg, vocab_size=20, device="cuda")
    step_model = torch.compile(model) if compiled else model
    autocast, scaler = mixed_precision("cuda", dtype)
    data = (torch.arange(20_000, device="cuda") * 7) % 20  # each token follows from the last
    batches = torch.Generator(device="cuda").manual_seed(1)
    return [train.train_step(step_model, optimizer, scaler, autocast, data, batches, cfg, range(1)).item()
            for _ in range(steps)]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_steps_give_a_finite_falling_loss(dtype):
    """bf16 autocast, and fp16 with the grad scaler, which must unscale before clipping and skip no good step."""
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    losses = step_losses(dtype, compiled=False)
    assert all(map(lambda loss: loss == loss and abs(loss) != float("inf"), losses))
    assert losses[-1] < 0.5 * losses[0]


def test_compiled_and_eager_steps_agree():
    dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    eager = step_losses(dtype, compiled=False, steps=10)
    compiled = step_losses(dtype, compiled=True, steps=10)
    assert compiled == pytest.approx(eager, rel=5e-2, abs=2e-2)  # bf16 rounds differently in fused kernels


@pytest.mark.parametrize("compile_mode", ["default", "reduce-overhead"])
def test_a_compiled_run_trains_and_resumes(tiny_data, tmp_path, compile_mode):
    """A run with torch.compile (reduce-overhead: CUDA graphs too), stopped at iter 20 and resumed to 40, logs every
    evaluation once with a falling val loss, and saves the uncompiled module's keys."""
    out = tmp_path / "gpu"
    settings = dict(device="cuda", dtype="auto", compile="true", compile_mode=compile_mode)
    train.main(tiny_train_args(tiny_data, out, max_iters=20, lr_decay_iters=40, **settings))
    train.main(tiny_train_args(tiny_data, out, max_iters=40, lr_decay_iters=40, init_from="resume", **settings))
    config = json.loads((out / "config.json").read_text())
    assert config["device"] == "cuda" and config["compile"] is True and config["compile_mode"] == compile_mode
    assert config["dtype"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    metrics = read_metrics(out)
    assert [m["iter_num"] for m in metrics] == [0, 10, 20, 30, 40]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 0.5
    assert read_summary(out)["iter_num"] == 40
    best = torch.load(out / "best.pt", weights_only=True, map_location="cpu")
    assert not any(k.startswith("_orig_mod.") for k in best["model"])


def test_a_float16_run_saves_its_grad_scaler(tiny_data, tmp_path):
    out = tmp_path / "fp16"
    train.main(tiny_train_args(tiny_data, out, device="cuda", dtype="float16", compile="false"))
    metrics = read_metrics(out)
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 0.5
    ckpt = torch.load(out / "ckpt.pt", weights_only=True, map_location="cpu")
    assert ckpt["scaler"]["scale"] > 0  # the loss scale, to resume with


def test_a_checkpoint_saved_on_the_gpu_gives_the_same_greedy_text_on_the_cpu(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "gpu"
    train.main(tiny_train_args(tiny_data, out, device="cuda", dtype="auto", compile="false"))
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # training turned it on: plain fp32 here
    texts = {}
    for device in ("cuda", "cpu"):
        model, vocab, _ = load_model(out, device)
        texts[device] = sample.generate_texts(model, vocab, "First", 1, 60, 1.0, 1, 0, device)[0]
    assert texts["cuda"] == texts["cpu"] and len(texts["cpu"]) == len("First") + 60


def test_torchrun_with_one_process_trains_on_nccl(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train.py",
               *tiny_train_args(tiny_data, out, device="cuda", compile="false")]
    proc = subprocess.run(command, cwd=REPO, env=os.environ | {"NCCL_DEBUG": "INFO"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NCCL INFO" in proc.stdout + proc.stderr  # the process group ran on NCCL
    info = json.loads((out / "run.json").read_text())
    assert info["device"] == "cuda:0" and info["world_size"] == 1
    assert read_summary(out)["iter_num"] == 40


@pytest.mark.parametrize("fits", [True, False])
def test_the_data_is_kept_on_the_gpu_when_it_fits_else_batches_come_from_the_host(tiny_data, tmp_path, monkeypatch,
                                                                                   fits):
    """A split that fits is copied to the GPU once, as int32; one that does not stays a memory map on the host and
    each batch is copied over. Either way a run trains."""
    import data
    if not fits:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (1024, 80 << 30))
    _, train_ids, _, _ = data.load_data(tiny_data, "cuda", 16)
    assert (train_ids.device.type, train_ids.dtype) == (("cuda", torch.int32) if fits else ("cpu", torch.uint16))
    summary = train.main(tiny_train_args(tiny_data, tmp_path / "run", device="cuda", dtype="float32",
                                         compile="false", max_iters=20))
    assert summary["status"] == "finished" and summary["best_val_loss"] < 4.0


def test_a_speedrun_style_run_compiles_muon_and_stops_at_its_target(tiny_data, tmp_path):
    """config/speedrun.py's path, tiny: Muon with its iteration compiled, CUDA graphs, evaluations near target_loss,
    and a run that ends at the first one at or below it, having saved both checkpoints there."""
    whole = tmp_path / "whole"
    settings = dict(device="cuda", compile="true", compile_mode="reduce-overhead", optimizer="muon",
                    muon_learning_rate=0.03, position_encoding="rope", dropout=0.0, log_interval=2)
    train.main(tiny_train_args(tiny_data, whole, eval_interval=2, **settings))
    target = read_metrics(whole)[10]["val_loss"]
    race = tmp_path / "race"
    summary = train.main(tiny_train_args(tiny_data, race, eval_interval=100, target_loss=target,
                                         target_eval_interval=2, **settings))
    assert summary["status"] == "target_reached" and summary["best_val_loss"] <= target
    assert 0 < summary["eval_s"] < summary["elapsed_s"]
    assert torch.load(race / "ckpt.pt", weights_only=True, map_location="cpu")["iter_num"] == summary["iter_num"]


def test_muons_compiled_iteration_on_the_gpu_matches_the_eager_one():
    from optim import Muon
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(64, 192), (192, 64), (64, 64)]
    runs = []
    for compiled in (False, True):
        weights = [torch.randn(s, generator=gen.manual_seed(i), device="cuda").requires_grad_()
                   for i, s in enumerate(shapes)]
        optimizer = Muon([{"params": weights, "use_muon": True}], lr=0.02, momentum=0.95, fused=True,
                         compiled=compiled)
        for step in range(3):
            for i, w in enumerate(weights):
                w.grad = torch.randn(w.shape, generator=gen.manual_seed(100 * step + i), device="cuda")
            optimizer.step()
        runs.append([w.detach() for w in weights])
    for eager, compiled in zip(*runs):
        torch.testing.assert_close(compiled, eager, atol=2e-2, rtol=2e-2)  # bf16 iteration, fused differently


def test_a_compiled_evaluation_compiles_once_whatever_the_split_length():
    """Every evaluation batch has one shape (evaluate.eval_batches fills out the last one), so evaluating a split whose
    length is no multiple of the batch, twice, compiles the evaluation once and never again."""
    from contextlib import nullcontext
    torch.manual_seed(0)
    model = train.build(replace(train.TrainConfig(), **TINY), vocab_size=20, device="cuda")[0]
    model.compile(mode="reduce-overhead")
    ids = torch.randint(20, (32 * 70 + 7,), device="cuda")  # 70 windows and a last, shorter one
    cfg = replace(train.TrainConfig(), **TINY)
    with torch._dynamo.config.patch(error_on_recompile=True):
        losses = [train.estimate_loss(model, {"val": (ids, 0)}, cfg, nullcontext())["val_loss"] for _ in range(2)]
    assert losses[0] == pytest.approx(losses[1])


def test_the_evaluation_sample_of_a_compiled_model_runs_eager_and_recompiles_nothing():
    """train.py samples at evaluations from the model it compiled: generation calls forward itself, so the text
    is the eager model's and the compiled evaluation around it is never recompiled."""
    from contextlib import nullcontext
    cfg = replace(train.TrainConfig(), **TINY)
    torch.manual_seed(0)
    model = train.build(cfg, vocab_size=20, device="cuda")[0].eval()
    vocab = [chr(97 + i) for i in range(19)] + ["\n"]
    eager = sample.evaluation_sample(model, vocab, 50, 3, 0, 1, ending=True)
    model.compile(mode="reduce-overhead")
    ids = torch.randint(20, (32 * 40,), device="cuda")
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):
            train.estimate_loss(model, {"val": (ids, 0)}, cfg, nullcontext())
            assert sample.evaluation_sample(model, vocab, 50, 3, 0, 1, ending=True) == eager


@pytest.mark.parametrize("options", ["gpt2", "modern", "sinusoidal"])
def test_explain_measures_on_the_gpu_equal_the_cpus(tiny_data, options, monkeypatch):
    """explain.py's attention weights, context curve and layer-by-layer loss, for each architecture option, on the GPU
    and on the CPU (plain float32 on both)."""
    import explain
    from test_explain import OPTIONS, model_on
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    from data import load_data
    val_ids = load_data(tiny_data, "cpu", 16)[2]
    measured = {}
    for device in ("cpu", "cuda"):
        model = model_on(tiny_data, **OPTIONS[options]).to(device)
        idx = torch.arange(12, device=device)[None] % model.config.vocab_size
        measured[device] = ([w.cpu() for w in explain.trace(model, idx)["attention"]],
                            explain.val_measures(model, val_ids, 0, batch_size=8))
    (cpu_maps, cpu_val), (gpu_maps, gpu_val) = measured["cpu"], measured["cuda"]
    for cpu_weights, gpu_weights in zip(cpu_maps, gpu_maps):
        torch.testing.assert_close(gpu_weights, cpu_weights, atol=1e-4, rtol=1e-4)
    assert gpu_val["layer_loss"] == pytest.approx(cpu_val["layer_loss"], rel=1e-4)
    assert gpu_val["context_loss"] == pytest.approx(cpu_val["context_loss"], rel=1e-4)


def test_explain_runs_on_the_gpu_for_a_nanogpt_checkpoint(tiny_data, tmp_path):
    import explain
    from test_nanogpt_compat import nanogpt_model_for, write_nanogpt_run
    model, args, meta = nanogpt_model_for(tiny_data)
    write_nanogpt_run(tmp_path / "nanogpt", model.eval(), args, meta)
    numbers = explain.main([f"--out_dir={tmp_path / 'nanogpt'}", f"--data_dir={tiny_data}", "--device=cuda",
                            "--eval_tokens=0"])
    assert len(numbers["layer_loss"]) == model.config.n_layer + 1 and numbers["samples"] == []
    assert (tmp_path / "nanogpt" / "explain" / "attention.png").is_file()
