import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import devices
import optim
import train
from conftest import evaluate_on, tiny_train_args
from data import load_data
from model import GPT, GPTConfig
from optim import Muon, l1_norm, make_optimizer, orthogonalize, update_ema


def read_metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("shape", [(32, 32), (16, 48), (96, 32)])
def test_orthogonalize_sets_the_singular_values_near_one(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 100  # one dominant direction: the gradient's usual shape, which orthogonalising evens out
    o = orthogonalize(g)
    assert o.shape == g.shape
    # O keeps g's singular vectors and maps each singular value s to ~1: U^T O V is diagonal, with ~1 on the diagonal
    # wherever s is not negligible (5 steps lift values down to ~1/300 of the norm; a random square matrix has some
    # smaller still, which stay small, as in the published algorithm).
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    mapped = u.mT @ o @ vh.mT
    diagonal = torch.diagonal(mapped)
    torch.testing.assert_close(mapped, torch.diag(diagonal), atol=2e-3, rtol=0)
    kept = diagonal[s > g.norm() / 250]
    assert len(kept) >= min(shape) // 2 and kept.min() > 0.6 and kept.max() < 1.25, (s, diagonal)
    assert s.max() > 50 * s.median()  # ... although g's largest singular value dwarfed the others


def test_muon_adamw_groups_take_the_same_steps_as_torch_adamw():
    torch.manual_seed(0)
    w_ours = torch.randn(8, 4, requires_grad=True)
    w_torch = w_ours.detach().clone().requires_grad_(True)
    ours = Muon([{"params": [w_ours], "weight_decay": 0.1}], lr=1e-2, betas=(0.9, 0.99))
    reference = torch.optim.AdamW([w_torch], lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, eps=1e-8)
    for _ in range(5):
        g = torch.randn(8, 4)
        w_ours.grad, w_torch.grad = g.clone(), g.clone()
        ours.step()
        reference.step()
    torch.testing.assert_close(w_ours, w_torch)


def test_muon_solves_a_small_least_squares_problem():
    # Find W with W A = B for a random A, B: a matrix problem whose gradient (W A - B) A^T is dominated by A's few
    # largest directions. Muon moves along all of them at once and finds W in 100 steps.
    gen = torch.Generator().manual_seed(0)
    a, target = torch.randn(16, 64, generator=gen), torch.randn(24, 16, generator=gen)
    b = target @ a
    w = torch.zeros(24, 16, requires_grad=True)
    optimizer = Muon([{"params": [w], "use_muon": True}], lr=0.2, momentum=0.9)
    first = None
    for step in range(100):
        for group in optimizer.param_groups:
            group["lr"] = 0.2 * (1 - step / 100)  # decay to zero: orthogonal steps have a fixed size
        loss = ((w @ a - b) ** 2).mean()
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 1e-3 * first, f"loss {loss.item():.4f} from {first:.4f}"
    torch.testing.assert_close(w.detach(), target, atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="matrices only"):
        Muon([{"params": [torch.zeros(3, requires_grad=True)], "use_muon": True}], lr=0.1)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, tie_weights=False))
    optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.99), fused=False, kind="muon", muon_learning_rate=0.02)
    names = {id(p): name for name, p in model.named_parameters()}
    muon, *adamw = optimizer.param_groups
    assert muon["use_muon"] and muon["lr_scale"] == pytest.approx(20.0)
    assert sorted(names[id(p)].split(".", 3)[-1] for p in muon["params"]) == sorted(
        ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"] * 2)
    assert {names[id(p)] for p in adamw[0]["params"]} == {"transformer.wte.weight", "transformer.wpe.weight",
                                                         "lm_head.weight"}
    assert all(p.dim() == 1 for p in adamw[1]["params"]) and adamw[1]["weight_decay"] == 0.0
    assert all(not g["use_muon"] and g["lr_scale"] == 1.0 for g in adamw)


@pytest.mark.parametrize("options", [dict(optimizer="sgd", learning_rate=0.3, min_lr=0.03),
                                     dict(optimizer="muon", muon_learning_rate=0.03)], ids=lambda o: o["optimizer"])
def test_a_run_with_sgd_or_muon_learns_and_resumes_the_same_curve(tiny_data, tmp_path, options):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train.main(tiny_train_args(tiny_data, straight, max_iters=40, eval_interval=10, **options))
    train.main(tiny_train_args(tiny_data, halves, max_iters=20, lr_decay_iters=40, eval_interval=10, **options))
    train.main(tiny_train_args(tiny_data, halves, max_iters=40, lr_decay_iters=40, eval_interval=10,
                               init_from="resume", **options))
    expected = [(m["iter_num"], m["train_loss"], m["val_loss"]) for m in read_metrics(straight)]
    assert [(m["iter_num"], m["train_loss"], m["val_loss"]) for m in read_metrics(halves)] == expected
    assert expected[-1][2] < expected[0][2] - 0.5


def test_resume_with_another_optimizer_is_refused(tiny_run, tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with pytest.raises(SystemExit):
        train.main(tiny_train_args(tiny_data, run, init_from="resume", max_iters=60, optimizer="muon"))
    err = capsys.readouterr().err
    assert "it was trained with optimizer adamw, this run asks for muon (set --optimizer=adamw" in err


def test_l1_penalty_pulls_weights_to_zero(tiny_data, tmp_path):
    plain, sparse = tmp_path / "plain", tmp_path / "sparse"
    train.main(tiny_train_args(tiny_data, plain, weight_decay=0.0))
    train.main(tiny_train_args(tiny_data, sparse, weight_decay=0.0, l1=1e-3))

    def l1_of(run):
        weights = torch.load(run / "ckpt.pt", weights_only=True)["model"]
        return sum(w.abs().sum().item() for w in weights.values() if w.dim() >= 2)

    assert l1_of(sparse) < 0.8 * l1_of(plain)
    # The logged losses are the cross-entropy, without the penalty (about 1e-3 * 300 here).
    assert read_metrics(sparse)[-1]["train_loss"] < read_metrics(plain)[0]["train_loss"] - 0.5
    weights = torch.nn.ParameterList([torch.ones(2, 3), -torch.ones(4, 1), torch.ones(5)])  # the vector is no matrix
    assert l1_norm(weights).item() == 10.0


def test_ema_follows_the_weights_with_its_decay():
    model = torch.nn.Linear(2, 2, bias=False)
    average = torch.nn.Linear(2, 2, bias=False)
    average.weight.data.zero_()
    model.weight.data.fill_(1.0)
    update_ema(average, model, decay=0.5, iter_num=1000)
    torch.testing.assert_close(average.weight, torch.full((2, 2), 0.5))
    update_ema(average, model, decay=0.99, iter_num=0)  # early: d = 1/10, mostly the new weights
    torch.testing.assert_close(average.weight, torch.full((2, 2), 0.95))


def test_ema_is_evaluated_saved_and_resumed(tiny_data, tmp_path):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    summary = train.main(tiny_train_args(tiny_data, straight, max_iters=40, eval_interval=10, ema=0.9))
    ckpt = torch.load(straight / "ckpt.pt", weights_only=True)
    best = torch.load(straight / "best.pt", weights_only=True)
    assert "train_model" in ckpt and "train_model" not in best
    # "model" is the average, not the trained weights; it is what was evaluated: its val loss is the one logged.
    name = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(ckpt["model"][name], ckpt["train_model"][name])
    model = GPT(GPTConfig(**best["model_config"])).eval()
    model.load_state_dict(best["model"])
    val = load_data(tiny_data, "cpu", 16)[2]
    loss = evaluate_on(model, val, 16, 64)["val_loss"]
    assert loss == pytest.approx(summary["best_val_loss"], abs=1e-5)

    train.main(tiny_train_args(tiny_data, halves, max_iters=20, lr_decay_iters=40, eval_interval=10, ema=0.9))
    train.main(tiny_train_args(tiny_data, halves, max_iters=40, lr_decay_iters=40, eval_interval=10, ema=0.9,
                               init_from="resume"))
    def curve(run):
        return [(m["iter_num"], m["train_loss"], m["val_loss"]) for m in read_metrics(run)]

    assert len(curve(straight)) == 5 and curve(halves) == curve(straight)


def test_newton_schulz_in_bfloat16_orthogonalises_like_float32():
    """Muon's iteration runs in bfloat16 where the hardware has it (GPUs, CPUs with bf16 units): the same map, to
    bfloat16's precision."""
    g = torch.randn(96, 32, generator=torch.Generator().manual_seed(0))
    exact, fast = orthogonalize(g), orthogonalize(g, dtype=torch.bfloat16)
    assert fast.dtype == g.dtype
    torch.testing.assert_close(fast, exact, atol=0.03, rtol=0)
    assert optim.newton_schulz_dtype("cuda") == torch.bfloat16
    assert optim.newton_schulz_dtype("mps") == torch.float32


def test_a_stack_of_matrices_is_orthogonalised_each_on_its_own():
    """Muon orthogonalises its matrices of one shape as one stack (tall ones transposed): each comes out as it would
    alone."""
    gen = torch.Generator().manual_seed(0)
    stack = torch.randn(3, 16, 48, generator=gen)
    stack[1] *= 1000  # matrices of very different sizes: each is normalised by its own norm
    alone = torch.stack([orthogonalize(g) for g in stack])
    torch.testing.assert_close(orthogonalize(stack), alone, atol=1e-5, rtol=0)
    tall = stack.mT.contiguous()
    torch.testing.assert_close(orthogonalize(tall), alone.mT, atol=1e-5, rtol=0)


def test_muon_steps_like_one_matrix_at_a_time_and_saves_torch_optims_format():
    """The matrices of a shape share one stacked iteration, the tall ones transposed into it: every weight moves as
    if orthogonalised alone. Its state_dict is torch.optim's, so a run saved by an older version loads."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 48), (48, 16), (16, 48), (16, 16)]
    weights = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    gain = torch.ones(16, requires_grad=True)
    optimizer = Muon([{"params": weights, "use_muon": True}, {"params": [gain]}], lr=0.1, momentum=0.9)
    before = [w.detach().clone() for w in weights]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    for w, g in zip(weights, grads):
        w.grad = g.clone()
    gain.grad = torch.randn(16, generator=gen)
    optimizer.step()
    for w, w0, g in zip(weights, before, grads):
        direction = g + 0.9 * g  # Nesterov: the gradient plus momentum times the buffer (the gradient, at step 1)
        scale = max(1.0, w.size(0) / w.size(1)) ** 0.5
        expected = w0 - 0.1 * scale * orthogonalize(direction, dtype=optim.newton_schulz_dtype("cpu"))
        torch.testing.assert_close(w.detach(), expected, atol=1e-5, rtol=0)

    reference = torch.optim.Optimizer(optimizer.param_groups, {})  # torch's own writer of the format
    reference.state = optimizer.state
    ours, theirs = optimizer.state_dict(), reference.state_dict()
    assert ours["param_groups"] == theirs["param_groups"] and ours["state"].keys() == theirs["state"].keys()
    fresh = Muon([{"params": [w.detach().clone() for w in weights], "use_muon": True},
                  {"params": [gain.detach().clone()]}], lr=0.1, momentum=0.9)
    fresh.load_state_dict(theirs)
    for n, p in enumerate(p for group in fresh.param_groups for p in group["params"]):
        for key, value in theirs["state"][n].items():
            assert torch.equal(fresh.state[p][key], value) if isinstance(value, torch.Tensor) \
                else fresh.state[p][key] == value


def test_a_muon_run_starts_without_importing_torch_compile():
    """torch.optim's optimizers import torch._dynamo when first used: a large share of a short CPU run's start-up,
    which a run that does not compile has no use for. Muon is not one."""
    code = ("import sys, torch, optim; from model import GPT, GPTConfig; "
            "m = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)); "
            "o = optim.make_optimizer(m, 1e-3, 0.1, (0.9, 0.99), fused=False, kind='muon'); "
            "m(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[1].backward(); "
            "o.step(); o.zero_grad(); o.load_state_dict(o.state_dict()); "
            "assert 'torch._dynamo' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def muon_steps(fused: bool, compiled: bool = False, steps: int = 3) -> list[torch.Tensor]:
    """The weights after a few Muon steps on fixed gradients: two matrix shapes, and a gain that AdamW steps."""
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(s, generator=gen).requires_grad_() for s in [(8, 16), (16, 8), (8, 8)]]
    gain = torch.ones(8, requires_grad=True)
    optimizer = Muon([{"params": weights, "use_muon": True, "weight_decay": 0.1}, {"params": [gain]}], lr=0.05,
                     momentum=0.9, weight_decay=0.1, fused=fused, compiled=compiled)
    for _ in range(steps):
        for p in [*weights, gain]:
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()
    return [p.detach() for p in [*weights, gain]]


@pytest.mark.skipif(not devices.fused_adamw_available("cpu"), reason="this PyTorch has no fused AdamW for the CPU")
def test_muons_fused_adamw_part_steps_like_its_loop():
    for fused, looped in zip(muon_steps(fused=True), muon_steps(fused=False)):
        torch.testing.assert_close(fused, looped)


def test_muon_state_saved_with_a_python_int_step_still_loads_and_steps():
    w = torch.ones(4, requires_grad=True)
    optimizer = Muon([{"params": [w]}], lr=0.1)
    optimizer.load_state_dict({"state": {0: {"step": 3, "exp_avg": torch.zeros(4), "exp_avg_sq": torch.zeros(4)}},
                               "param_groups": [{**optimizer.defaults, "params": [0]}]})
    w.grad = torch.ones(4)
    optimizer.step()
    assert optimizer.state[w]["step"].item() == 4 and w.detach().lt(1).all()


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="inductor's CPU backend needs a C++ compiler (.ci/run says how CI gets one)")
def test_muons_compiled_iteration_steps_like_the_eager_one():
    torch._dynamo.reset()
    for compiled, eager in zip(muon_steps(fused=False, compiled=True), muon_steps(fused=False)):
        torch.testing.assert_close(compiled, eager, atol=1e-3, rtol=1e-3)
