"""A GPT: a decoder-only transformer that predicts the next token, in the shape of GPT-2.

    token ids (B, T) -> wte + wpe -> n_layer x [x + attn(ln_1(x)), x + mlp(ln_2(x))] -> ln_f -> lm_head -> logits

Attention goes through torch.nn.functional.scaled_dot_product_attention, which picks a fused kernel (flash
attention on recent GPUs). Generation keeps a KV cache, so that each new token costs one position rather than a whole
window, while the text fits in block_size; past it, the window is recomputed: the text is always what the model
predicts from the last block_size tokens.
"""

import math
from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    """The model's settings, declared here once: train.py's TrainConfig takes them as its own keys."""
    block_size: int = 256  # context length in tokens
    n_layer: int = 6  # transformer blocks
    n_head: int = 6  # attention heads per block
    n_embd: int = 384  # width of the residual stream
    dropout: float = 0.2  # dropout probability in training
    bias: bool = False  # biases in Linear and LayerNorm layers
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"  # the normalisation before each block and the output
    qk_norm: bool = False  # normalise each head's queries and keys (with `norm`) before attention
    tie_weights: bool = True  # the output layer reuses the token embedding's weights
    mlp: Literal["gelu", "relu2", "swiglu"] = "gelu"  # the MLP's nonlinearity; swiglu's is 8/3 as wide: equal params
    position_encoding: Literal["learned", "sinusoidal", "rope"] = "learned"  # how the model knows where a token is


# The settings that give the weights their shapes and meaning: all but dropout. A checkpoint resumes, and a run from
# a trained model starts, only with the same ones.
SHAPE_KEYS = tuple(f.name for f in fields(ModelConfig) if f.name != "dropout")


@dataclass
class GPTConfig(ModelConfig):
    """The model's settings and its vocabulary's size, which comes from the data: what a checkpoint's model_config
    holds."""
    vocab_size: int = 65  # number of distinct tokens (characters)


def make_norm(config: GPTConfig, dim: int) -> nn.Module:
    """The normalisation layer the config asks for, over the last dimension of size dim."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim)
    assert config.norm == "layernorm", f"unknown norm {config.norm!r}"
    return nn.LayerNorm(dim, bias=config.bias)


# Vaswani et al.'s sines and cosines have an RMS of 1/sqrt(2), far above GPT-2's token embeddings (initialised at
# 0.02): at full size the positions drown out the characters. They are scaled down to an RMS of 0.07, near the size
# the token embeddings grow to; EXPERIMENTS.md has the scales that were tried.
SINUSOID_SCALE = 0.07 * math.sqrt(2)


def sinusoid_angles(n_positions: int, dim: int) -> torch.Tensor:
    """(n_positions, dim // 2): position p times the frequencies 10000^(-2i/dim), i = 0 .. dim/2 - 1, the wavelengths
    growing geometrically from 2 pi to 10000 * 2 pi."""
    frequencies = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
    return torch.outer(torch.arange(n_positions, dtype=torch.float32), frequencies)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding: each pair (x_i, x_{i + hs/2}) of x (B, nh, T, hs) turned by its position's angle
    (cos, sin: (T, hs/2)). A query and a key then meet at an angle that depends only on how far apart they are."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # under autocast, q and k must keep v's dtype
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


# Below this many weights (512 KiB of float32, about a core's L2 cache) a matrix is cheap to read, and splitting it
# costs more than it saves (BENCHMARKS.md).
SPLIT_MIN_WEIGHTS = 1 << 17


class Linear(nn.Linear):
    """nn.Linear, with a faster path for the few rows of generation on a CPU.

    Generating one token multiplies each weight matrix by a single vector, so a cached step is bound by reading the
    weights from memory, and MKL does that product on one core. Cut into one block of rows per thread and multiplied
    as a batch, the same product reads the blocks on every core at once (BENCHMARKS.md has the speed-up). Same
    weights, same state-dict keys; the sums only round differently.
    """

    def forward(self, x):
        few_rows = x.numel() <= 16 * self.in_features  # more than 16 rows make a matrix product, not a vector one
        big = self.weight.numel() >= SPLIT_MIN_WEIGHTS
        if x.device.type != "cpu" or not few_rows or not big or torch.compiler.is_compiling():
            return super().forward(x)
        blocks = torch.get_num_threads()
        if blocks == 1 or self.out_features % blocks:
            return super().forward(x)
        rows = x.reshape(-1, self.in_features).t()  # (in, M)
        weight_blocks = self.weight.view(blocks, -1, self.in_features)  # (blocks, out/blocks, in)
        y = torch.bmm(weight_blocks, rows.expand(blocks, -1, -1))  # (blocks, out/blocks, M)
        y = y.permute(2, 0, 1).reshape(*x.shape[:-1], self.out_features)  # (..., out)
        return y if self.bias is None else y + self.bias


GENERATION_CACHES = ("exact", "approximate", "none")  # GPT.generate's ways of reusing work between steps


class KVCache:
    """Keys and values of the positions seen so far, for every layer, in buffers of block_size positions allocated
    on first use. Each step writes its new positions in place: appending with torch.cat would copy the whole cache
    at every token, which on a CPU costs more than the attention itself."""

    def __init__(self, n_layer: int):
        self.buffers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layer  # each (B, nh, block, hs)
        self.length = 0  # positions cached so far

    def __len__(self) -> int:
        return self.length

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, capacity: int):
        """Write k, v (B, nh, T, hs) after the cached positions; return every position's keys and values so far."""
        if self.buffers[layer] is None:
            B, nh, _, hs = k.shape
            self.buffers[layer] = (k.new_empty(B, nh, capacity, hs), v.new_empty(B, nh, capacity, hs))
        k_buffer, v_buffer = self.buffers[layer]
        end = self.length + k.size(2)
        k_buffer[:, :, self.length:end] = k
        v_buffer[:, :, self.length:end] = v
        return k_buffer[:, :, :end], v_buffer[:, :, :end]  # (B, nh, end, hs)

    def advance(self, n_positions: int) -> None:
        """Called once the last layer has stored them: the new positions become part of the cache."""
        self.length += n_positions


class CausalSelfAttention(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0, f"n_embd {config.n_embd} not divisible by n_head {config.n_head}"
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.block_size = config.block_size  # the KV cache's capacity
        self.dropout = config.dropout
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads at once
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        hs = config.n_embd // config.n_head
        self.qk_norm = config.qk_norm
        if config.qk_norm:
            self.q_norm = make_norm(config, hs)  # one gain per head dimension
            self.k_norm = make_norm(config, hs)

    def queries_keys_values(self, x, rotary=None):
        """q, k, v of x (B, T, C) for every head, each (B, nh, T, hs): q and k as attention compares them, after
        qk_norm and rotary positions where the model has them."""
        B, T, C = x.size()  # batch, sequence length, n_embd
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if self.qk_norm:  # before the cache: cached keys are normalised already
            # In float32: under autocast q and k are bf16, and RMSNorm's float32 gain would then take a slow path.
            q, k = self.q_norm(q.float()).to(v.dtype), self.k_norm(k.float()).to(v.dtype)
        if rotary is not None:  # (cos, sin) of these T positions, for position_encoding = rope
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        return q, k, v

    def attention_weights(self, x, rotary=None) -> torch.Tensor:
        """(B, nh, T, T): how much each position takes from each position up to it, softmax(q k^T / sqrt(hs)) under
        the causal mask. scaled_dot_product_attention computes these weights times v without keeping them."""
        q, k, _ = self.queries_keys_values(x, rotary)
        scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.size(-1))  # (B, nh, T, T)
        T = x.size(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0, rotary=None):
        B, T, C = x.size()  # batch, sequence length, n_embd
        q, k, v = self.queries_keys_values(x, rotary)  # (B, nh, T, hs) each
        has_past = cache is not None and len(cache) > 0
        if has_past:
            # Decoding one new position: it may attend to every cached position, so no mask is needed.
            assert T == 1, f"with a filled KV cache, feed one token at a time (got T={T})"
        if cache is not None:
            k, v = cache.store(layer, k, v, self.block_size)  # (B, nh, T_past + T, hs)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=not has_past)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """n_embd -> hidden -> n_embd. gelu and relu2 have two matrices and hidden = 4 n_embd. swiglu has three (its
    c_fc makes a gate and a value), so its hidden width is 8/3 n_embd, rounded down to a multiple of 8: about the
    same parameters and compute as the others."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind = config.mlp
        assert self.kind in ("gelu", "relu2", "swiglu"), f"unknown mlp {self.kind!r}"
        hidden = 4 * config.n_embd if self.kind != "swiglu" else 8 * config.n_embd // 3 // 8 * 8
        fc_out = 2 * hidden if self.kind == "swiglu" else hidden
        self.c_fc = Linear(config.n_embd, fc_out, bias=config.bias)
        self.c_proj = Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)  # (B, T, hidden), or (B, T, 2 * hidden) for swiglu
        if self.kind == "swiglu":
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = F.gelu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm residual block: normalise, transform, add back to the residual stream."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0, rotary=None):
        x = x + self.attn(self.ln_1(x), cache, layer, rotary)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        assert config.position_encoding in ("learned", "sinusoidal", "rope"), \
            f"unknown position_encoding {config.position_encoding!r}"
        learned = config.position_encoding == "learned"
        # The modules' order fixes the parameters' order, which an optimizer state follows: wpe stays second.
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding
            **({"wpe": nn.Embedding(config.block_size, config.n_embd)} if learned else {}),  # learned positions
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config, config.n_embd),
        ))
        if config.position_encoding == "sinusoidal":  # fixed, so a buffer rebuilt on load rather than saved
            angles = sinusoid_angles(config.block_size, config.n_embd)  # (block, C/2)
            table = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # sin, cos interleaved: (block, C)
            self.register_buffer("wpe_sinusoidal", table * SINUSOID_SCALE, persistent=False)
        elif config.position_encoding == "rope":
            angles = sinusoid_angles(config.block_size, config.n_embd // config.n_head)  # (block, hs/2)
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            # The output layer reuses the token embedding, which saves parameters and helps small models.
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch's output projection is shrunk by 1/sqrt(2 * n_layer) so the
        # residual stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. The embeddings are left out by default, as they add no compute per token, except the
        token embedding when it is also the (tied) output layer."""
        n = sum(p.numel() for p in self.parameters())  # a tied weight is one parameter, counted once
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_weights:
                n -= self.transformer.wte.weight.numel()
        return n

    def forward(self, idx, targets=None, cache: KVCache | None = None, label_smoothing: float = 0.0):
        """idx (B, T) token ids -> logits (B, T, vocab_size), and the mean cross-entropy loss when targets is given
        (against targets smoothed by label_smoothing: training only; reported losses use 0).

        With a cache, positions continue from the cached length and the new keys and values are appended.
        """
        B, T = idx.size()
        start = len(cache) if cache is not None else 0
        assert start + T <= self.config.block_size, \
            f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}"
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.wte(idx)  # (B, T, C)
        rotary = None
        if self.config.position_encoding == "learned":
            x = x + self.transformer.wpe(pos)
        elif self.config.position_encoding == "sinusoidal":
            x = x + self.wpe_sinusoidal[pos].to(x.dtype)
        else:
            rotary = (self.rope_cos[pos], self.rope_sin[pos])  # (T, hs/2) each; applied in every attention layer
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i, rotary)
        if cache is not None:
            cache.advance(T)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1,
                                   label_smoothing=label_smoothing)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 cache: str = "exact", generator: torch.Generator | None = None):
        """Extend idx (B, T) by max_new_tokens sampled tokens and return (B, T + max_new_tokens).

        temperature 0 means greedy (always the most likely token). top_k keeps only the k most likely tokens.
        Each token is predicted from the last block_size tokens, as in training. cache says how (GENERATION_CACHES):
          exact        a KV cache while the text fits in block_size: each step feeds only the newest token. Past
                       block_size the window's first token changes at every step, and with it every later layer's
                       keys and values, so the window is recomputed: the same computation as none, cheaper only
                       up to block_size.
          approximate  keeps the cache past block_size by rebuilding it from the last half window whenever it
                       fills, so a token sees between block_size // 2 and block_size tokens: faster, but not what
                       the model computes for a full window, and the text differs from exact.
          none         recomputes the last block_size tokens at every step.
        """
        assert cache in GENERATION_CACHES, f"unknown cache {cache!r}: choose one of {', '.join(GENERATION_CACHES)}"
        block_size = self.config.block_size
        # forward itself, not the module's call: a model compiled for training (train.py's evaluation sample) would
        # recompile for each new length, where eager runs at once.
        forward = self.forward
        kv = None  # the KV cache: keys and values of positions 0 .. len(kv) - 1 of the current window
        logits = None
        for _ in range(max_new_tokens):
            if cache == "none" or (cache == "exact" and idx.size(1) > block_size):
                logits, _ = forward(idx[:, -block_size:])  # the whole window: (B, T, vocab_size)
            elif kv is None or len(kv) == block_size:  # the first step, or (approximate only) a full cache
                kv = KVCache(self.config.n_layer)
                keep = block_size if logits is None else block_size // 2
                logits, _ = forward(idx[:, -keep:], cache=kv)
            else:
                logits, _ = forward(idx[:, -1:], cache=kv)  # the newest token, at position len(kv)
            next_logits = logits[:, -1, :]  # (B, vocab_size)
            if temperature == 0:
                idx_next = next_logits.argmax(dim=-1, keepdim=True)
            else:
                next_logits = next_logits / temperature
                if top_k is not None and top_k < next_logits.size(-1):
                    kth = torch.topk(next_logits, top_k).values[:, [-1]]
                    next_logits = next_logits.masked_fill(next_logits < kth, float("-inf"))
                probs = F.softmax(next_logits.float(), dim=-1)
                idx_next = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
