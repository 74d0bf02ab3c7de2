import math

import pytest
import torch

import model as model_module
from model import GPT, GPTConfig, KVCache, Linear
from optim import make_optimizer


def tiny_model(**overrides) -> GPT:
    torch.manual_seed(0)
    settings = dict(block_size=16, vocab_size=11, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=False)
    settings.update(overrides)
    return GPT(GPTConfig(**settings)).eval()


def test_shapes_and_initial_loss():
    model = tiny_model()
    idx = torch.randint(11, (3, 16))
    logits, loss = model(idx)
    assert logits.shape == (3, 16, 11) and loss is None
    logits, loss = model(idx, targets=torch.randint(11, (3, 16)))
    assert loss.shape == ()
    # Small init makes the first predictions near uniform: loss close to ln(vocab_size).
    assert abs(loss.item() - math.log(11)) < 0.3


def test_longer_than_block_size_is_refused():
    with pytest.raises(AssertionError, match="longer than block_size 16"):
        tiny_model()(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("t", [0, 5, 15])
def test_causal_a_later_token_never_changes_earlier_logits(t):
    model = tiny_model(bias=True)
    idx = torch.randint(11, (2, 16))
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % 11
    before, _ = model(idx)
    after, _ = model(changed)
    torch.testing.assert_close(before[:, :t], after[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, t], after[:, t])  # the changed position itself does see the change


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (2, 8)])
def test_split_linear_for_few_rows_on_cpu_equals_a_plain_linear(shape, monkeypatch):
    """Generation's few rows take the row-block path (counted through torch.bmm); values and gradients must be the
    plain product's, up to rounding."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the split needs 2 threads; the product runs on any
    bmm_calls = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: bmm_calls.append(1) or real_bmm(*a))
    torch.manual_seed(0)
    layer = Linear(256, model_module.SPLIT_MIN_WEIGHTS // 256, bias=True)  # just large enough
    x = torch.randn(*shape, 256, requires_grad=True)
    y = layer(x)
    assert bmm_calls, "a few rows through a large weight should take the split path"
    expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y)
    split_grads = torch.autograd.grad(y, (x, layer.weight), grad)
    plain_grads = torch.autograd.grad(expected, (x, layer.weight), grad)
    for split_grad, plain_grad in zip(split_grads, plain_grads):
        torch.testing.assert_close(split_grad, plain_grad, rtol=1e-5, atol=1e-5)


def test_split_linear_leaves_small_weights_and_many_rows_to_the_plain_product(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch, "bmm", lambda *a: pytest.fail("took the split path"))
    small = Linear(32, 64)
    small(torch.randn(1, 32))
    big = Linear(256, model_module.SPLIT_MIN_WEIGHTS // 256)
    big(torch.randn(17, 256))  # more than 16 rows: an ordinary matrix product


def sharp_model(position_encoding: str) -> GPT:
    """A tiny model whose weights are scaled up, so that its predictions depend strongly on the context: on one that
    has only its small initial weights the half-window shortcut would go unnoticed."""
    model = tiny_model(position_encoding=position_encoding)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5)
    return model


@pytest.mark.parametrize("position_encoding", ["learned", "sinusoidal", "rope"])
@pytest.mark.parametrize("prompt_length", [3, 20])  # shorter and longer than block_size (16)
def test_cached_greedy_text_is_exactly_the_recomputed_windows(position_encoding, prompt_length):
    """For 3 x block_size new tokens, the KV cache gives the tokens that recomputing the last block_size tokens at
    every step gives, however long the prompt; the approximate mode, which keeps a shorter context, does not."""
    model = sharp_model(position_encoding)
    prompt = torch.randint(11, (2, prompt_length), generator=torch.Generator().manual_seed(1))
    new = 3 * model.config.block_size
    cached = model.generate(prompt, max_new_tokens=new, temperature=0, cache="exact")
    recomputed = model.generate(prompt, max_new_tokens=new, temperature=0, cache="none")
    assert cached.shape == (2, prompt_length + new)
    assert torch.equal(cached, recomputed)
    top_1 = model.generate(prompt, max_new_tokens=new, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(top_1, recomputed)
    approximate = model.generate(prompt, max_new_tokens=new, temperature=0, cache="approximate")
    assert not torch.equal(approximate, recomputed)


def test_an_unknown_cache_mode_is_refused():
    with pytest.raises(AssertionError, match="unknown cache 'rolling'"):
        tiny_model().generate(torch.zeros(1, 1, dtype=torch.long), 2, cache="rolling")


def test_kv_cache_logits_match_full_forward():
    model = tiny_model()
    idx = torch.randint(11, (2, 16))
    full, _ = model(idx)
    cache = KVCache(model.config.n_layer)
    first, _ = model(idx[:, :5], cache=cache)
    steps = [model(idx[:, t:t + 1], cache=cache)[0] for t in range(5, 16)]
    torch.testing.assert_close(torch.cat([first, *steps], dim=1), full, rtol=1e-5, atol=1e-5)


def test_generation_beyond_block_size_and_top_k_one_is_greedy():
    model = tiny_model()
    prompt = torch.randint(11, (1, 4))
    out = model.generate(prompt, max_new_tokens=40, temperature=1.0, top_k=1)
    assert out.shape == (1, 44) and torch.equal(out[:, :4], prompt)
    greedy = model.generate(prompt, max_new_tokens=40, temperature=0)
    assert torch.equal(out, greedy)


def test_same_generator_seed_same_sample():
    model = tiny_model()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    a = model.generate(prompt, 30, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 30, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_parameter_count():
    model = tiny_model()
    # Tied weights are one tensor, so parameters() counts them once.
    total = sum(p.numel() for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - 16 * 32
    per_block = 2 * 32 + 32 * 96 + 32 * 32 + 32 * 128 + 128 * 32  # two LayerNorm gains, attention, MLP
    assert total == 11 * 32 + 16 * 32 + 2 * per_block + 32


@pytest.mark.parametrize("kind, lr", [("adamw", 1e-2), ("sgd", 0.3), ("muon", 1e-2)])
def test_tiny_model_overfits_one_batch(kind, lr):
    model = tiny_model().train()
    torch.manual_seed(1)
    x = torch.randint(11, (4, 16))
    x[:, 0] = torch.arange(4)  # distinct first tokens, so every target is predictable from its prefix
    y = torch.randint(11, (4, 16))
    optimizer = make_optimizer(model, lr, 0.0, (0.9, 0.99), fused=False, kind=kind, momentum=0.9,
                               muon_learning_rate=0.05)
    for _ in range(200):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1, f"{kind}: loss {loss.item():.3f} after 200 steps on one batch"


ARCHITECTURES = [dict(norm="rmsnorm"), dict(qk_norm=True), dict(norm="rmsnorm", qk_norm=True), dict(tie_weights=False),
                 dict(mlp="relu2"), dict(mlp="swiglu"), dict(position_encoding="sinusoidal"),
                 dict(position_encoding="rope"), dict(position_encoding="rope", qk_norm=True, mlp="swiglu")]


@pytest.mark.parametrize("options", ARCHITECTURES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_architecture_option_stays_causal_and_caches_exactly(options):
    model = tiny_model(**options)
    idx = torch.randint(11, (2, 16))
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 11
    before, after = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(before[:, :9], after[:, :9], rtol=0, atol=1e-6)
    cache = KVCache(model.config.n_layer)
    steps = [model(idx[:, :5], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(5, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), before, rtol=1e-5, atol=1e-5)


def test_the_options_build_what_they_name():
    rms = tiny_model(norm="rmsnorm", qk_norm=True)
    assert isinstance(rms.transformer.ln_f, torch.nn.RMSNorm)
    assert isinstance(rms.transformer.h[0].attn.q_norm, torch.nn.RMSNorm)
    assert rms.transformer.h[0].attn.q_norm.weight.shape == (16,)  # one gain per head dimension (32 / 2 heads)
    tied, untied = tiny_model(), tiny_model(tie_weights=False)
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    total = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert total(untied) - total(tied) == 11 * 32  # a second (vocab, n_embd) matrix
    assert untied.num_params() == tied.num_params()  # the extra matrix is an embedding: no compute per token


def test_swiglu_keeps_the_parameter_count_and_positions_need_no_weights_but_learned():
    params = lambda **o: sum(p.numel() for p in tiny_model(n_embd=48, **o).transformer.h.parameters())  # noqa: E731
    assert abs(params(mlp="swiglu") / params() - 1) < 0.05  # hidden 128 = 8/3 * 48 (rounded to 8s) vs 4 * 48
    assert params(mlp="relu2") == params()
    learned, rope, sinusoidal = (tiny_model(position_encoding=p) for p in ("learned", "rope", "sinusoidal"))
    assert "transformer.wpe.weight" in learned.state_dict()
    assert not any("wpe" in k or "rope" in k for k in (*rope.state_dict(), *sinusoidal.state_dict()))
    # The fixed positions are scaled to the size learned embeddings reach (RMS 0.07), not Vaswani's 0.7, which would
    # drown out the token embeddings (RMS 0.02 at init).
    rms = lambda t: t.pow(2).mean().sqrt().item()  # noqa: E731
    assert rms(sinusoidal.wpe_sinusoidal) == pytest.approx(0.07, rel=0.05)
    assert rms(learned.transformer.wte.weight) == pytest.approx(0.02, rel=0.05)


def test_rope_attention_depends_only_on_relative_position():
    from model import rotate, sinusoid_angles
    angles = sinusoid_angles(16, 8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    score = lambda i, j: (rotate(q, angles[i].cos(), angles[i].sin()) *  # noqa: E731
                          rotate(k, angles[j].cos(), angles[j].sin())).sum()
    torch.testing.assert_close(score(5, 2), score(13, 10))  # both 3 apart
    assert not torch.allclose(score(5, 2), score(5, 4))
