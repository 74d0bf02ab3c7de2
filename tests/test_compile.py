"""torch.compile on the CPU: every architecture option compiles as one graph (fullgraph=True: no graph breaks) with
inductor, the backend a GPU run uses too, and trains like the eager model for a few steps.

Each variant costs a compilation of the forward and backward (10-30 s on 2 cores, the first one the most), so the
three variants together cover every value of every architecture option rather than every combination.
"""

import shutil
from dataclasses import replace

import pytest
import torch

import train
from devices import mixed_precision

VARIANTS = {  # together: each norm, mlp and position encoding, qk_norm, bias and tie_weights both ways
    "gpt2": dict(norm="layernorm", mlp="gelu", position_encoding="learned", bias=False, tie_weights=True),
    "modern": dict(norm="rmsnorm", qk_norm=True, mlp="swiglu", position_encoding="rope", tie_weights=False),
    "other": dict(mlp="relu2", position_encoding="sinusoidal", bias=True),
}
STEPS = 5


def losses(cfg, compiled: bool) -> list[float]:
    """The training loss of the first STEPS steps, from the same initial weights and batches."""
    torch.manual_seed(0)
    model, optimizer = train.build(cfg, vocab_size=20, device="cpu")
    step_model = torch.compile(model, fullgraph=True) if compiled else model
    autocast, scaler = mixed_precision("cpu", "float32")
    data = torch.arange(2_000) % 20  # a text that is easy to learn: each token is the last one plus 1
    batches = torch.Generator().manual_seed(2)
    return [train.train_step(step_model, optimizer, scaler, autocast, data, batches, cfg, range(1)).item()
            for _ in range(STEPS)]


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="inductor's CPU backend needs a C++ compiler (.ci/run says how CI gets one)")
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_architecture_option_compiles_as_one_graph_and_trains_like_eager(variant):
    cfg = replace(train.TrainConfig(), n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=4, dropout=0.0,
                  learning_rate=1e-2, **VARIANTS[variant])
    torch._dynamo.reset()  # each variant compiles afresh: no graph from another test is reused
    eager = losses(cfg, compiled=False)
    compiled = losses(cfg, compiled=True)  # fullgraph=True raises at the first graph break
    assert eager[-1] < eager[0]  # they train
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-4)
