"""torch.compile on the CPU: every architecture option compiles as one graph (fullgraph=True: no graph breaks) with
inductor, the backend a GPU run uses too, and trains like the eager model for a few steps.

Each variant costs a compilation of the forward and backward (10-30 s on 2 cores, the first one the most), so the
three variants together cover every value of every architecture option rather than every combination.
"""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import train
from conftest import REPO
from devices import mixed_precision

NEEDS_A_COMPILER = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                      reason="inductor's CPU backend needs a C++ compiler (.ci/run installs one)")

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


@NEEDS_A_COMPILER
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_architecture_option_compiles_as_one_graph_and_trains_like_eager(variant):
    cfg = replace(train.TrainConfig(), n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=4, dropout=0.0,
                  learning_rate=1e-2, **VARIANTS[variant])
    torch._dynamo.reset()  # each variant compiles afresh: no graph from another test is reused
    eager = losses(cfg, compiled=False)
    compiled = losses(cfg, compiled=True)  # fullgraph=True raises at the first graph break
    assert eager[-1] < eager[0]  # they train
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-4)


# A tiny model's first compiled forward pass in a fresh process: the seconds it took and the compile caches' counters.
# (A training step compiles its backward too, and takes longer; the cache serves it the same way: BENCHMARKS.md.)
FIRST_CALL = """
import json, time
import torch
from torch._dynamo.utils import counters
from model import GPT, GPTConfig
model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.0)).eval()
model.compile()
started = time.perf_counter()
with torch.no_grad():
    model(torch.zeros(2, 16, dtype=torch.long))
print(json.dumps({"s": time.perf_counter() - started, **counters["inductor"], **counters["aot_autograd"]}))
"""


@NEEDS_A_COMPILER
def test_a_second_process_compiles_from_the_cache_the_first_one_filled(tmp_path):
    """PyTorch keeps what inductor compiled (its FX graph cache and AOTAutograd's cache) in TORCHINDUCTOR_CACHE_DIR,
    so the same model compiles again in a new process without compiling anything. Checked by the caches' own
    counters, not by a time (the times are printed; BENCHMARKS.md has those of a training step)."""
    env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    first, second = (json.loads(subprocess.run([sys.executable, "-c", FIRST_CALL], cwd=REPO, env=env, check=True,
                                               capture_output=True, text=True).stdout.splitlines()[-1])
                     for _ in range(2))
    print(f"first compiled call {first['s']:.1f} s, from the cache {second['s']:.1f} s")
    assert first.get("fxgraph_cache_miss", 0) > 0 and first.get("fxgraph_cache_hit", 0) == 0
    assert second.get("fxgraph_cache_hit", 0) == first["fxgraph_cache_miss"] and "fxgraph_cache_miss" not in second
    assert second.get("autograd_cache_hit", 0) > 0
    assert any((tmp_path / "cache").rglob("*"))
