"""Train a character-level GPT.

    python train.py config/cpu.py                      # val loss 1.89 in under a minute on 2 CPU cores
    python train.py config/baseline.py                 # nanoGPT's Shakespeare-char recipe, for a GPU
    python train.py config/cpu.py --max_iters=500 --n_layer=2
    python train.py config/cpu.py --init_from=resume   # continue from out_dir/ckpt.pt
    torchrun --standalone --nproc_per_node=8 train.py config/baseline.py --gradient_accumulation_steps=8

Settings: the TrainConfig defaults below, then the config file's assignments, then --key=value overrides.
Everything a run makes lands in out_dir: config.json, run.json, metrics.jsonl, ckpt.pt and best.pt.

Under torchrun, each process trains a DistributedDataParallel replica: on its own GPU (cuda:LOCAL_RANK, NCCL) or on
the CPU (gloo). gradient_accumulation_steps stays the global number of micro-batches per step, shared out equally
among the processes, so the run trains the same model as one process would; only rank 0 writes out_dir and prints.
"""

import copy
import errno
import hashlib
import json
import math
import os
import pickle
import platform
import random
import signal
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from configurator import REPO_ROOT, UsageError, build_config, ensure_dir, parse_overrides, run_command, split_argv
from model import GPT, GPTConfig
from optim import Muon

CHECKPOINT_FORMAT_VERSION = 1
OVERFIT_MARGIN = 0.01  # nats the val loss may rise after its best before summary.json flags the run as overfitting


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out/run"  # where this run's logs and checkpoints go
    data_dir: str = "data/shakespeare_char"  # holds train.bin, val.bin and meta.json from prepare_shakespeare.py
    init_from: Literal["scratch", "resume"] = "scratch"  # 'resume' continues from out_dir/ckpt.pt
    always_save_checkpoint: bool = True  # write ckpt.pt at every evaluation (False: only when val loss improves)
    # evaluation and logging
    eval_interval: int = 250  # optimizer steps between evaluations (there is always one at the last step)
    eval_iters: int = 200  # random train batches averaged for the train loss (val loss uses the whole val split)
    early_stop_patience: int = 0  # stop after this many evaluations without a better val loss; 0 = never
    log_interval: int = 10  # optimizer steps between progress-bar updates (each reads the loss: a host sync)
    # system
    device: str = "auto"  # auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 (else fp16) on CUDA, else float32
    compile: bool | Literal["auto"] = "auto"  # torch.compile the model; auto: on for CUDA
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"  # reduce-overhead: CUDA graphs
    seed: int = 1337  # seeds weights, batches and dropout: the same seed gives the same run on CPU
    # data
    batch_size: int = 64  # sequences per micro-batch
    block_size: int = 256  # context length in characters
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step, over all processes under torchrun
    # model
    n_layer: int = 6  # transformer blocks
    n_head: int = 6  # attention heads per block
    n_embd: int = 384  # width of the residual stream
    dropout: float = 0.2  # dropout probability in training
    bias: bool = False  # biases in Linear and LayerNorm layers
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"  # the normalisation before each block and the output
    qk_norm: bool = False  # normalise each head's queries and keys (with `norm`) before attention
    tie_weights: bool = True  # the output layer reuses the token embedding's weights
    mlp: Literal["gelu", "relu2", "swiglu"] = "gelu"  # the MLP's nonlinearity; swiglu is 8/3 as wide, for equal params
    position_encoding: Literal["learned", "sinusoidal", "rope"] = "learned"  # how the model knows where a token is
    # optimizer
    optimizer: Literal["adamw", "sgd", "muon"] = "adamw"  # muon: Muon for the blocks' matrices, AdamW for the rest
    learning_rate: float = 1e-3  # peak learning rate (with muon: of the AdamW part)
    max_iters: int = 5000  # optimizer steps in total
    weight_decay: float = 0.1  # decoupled weight decay, applied to weight matrices only (sgd: classic L2)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.99  # AdamW beta2
    momentum: float = 0.9  # sgd and muon: momentum coefficient
    nesterov: bool = True  # sgd and muon: Nesterov momentum (look ahead along the momentum)
    muon_learning_rate: float = 0.02  # muon: peak learning rate of the blocks' weight matrices
    grad_clip: float = 1.0  # clip the gradient norm to this; 0 = no clipping
    l1: float = 0.0  # L1 penalty coefficient on the weight matrices, added to the training loss; 0 = off
    ema: float = 0.0  # decay of an exponential moving average of the weights, evaluated and saved instead; 0 = off
    label_smoothing: float = 0.0  # share of each target's probability spread over all characters in training; 0 = off
    # learning-rate schedule: linear warmup, then a decay to min_lr
    lr_schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"  # the decay's shape (wsd: flat, then linear)
    warmup_iters: int = 100  # steps of linear warmup from 0 to learning_rate
    lr_decay_iters: int = -1  # step at which the decay reaches min_lr; -1 = max_iters
    min_lr: float = 1e-4  # learning rate at the end of the decay
    wsd_decay_fraction: float = 0.2  # wsd only: the share of the steps to lr_decay_iters spent decaying


# ----------------------------------------------------------------------------------------------------------------------
# Configuration

def validate(cfg: TrainConfig) -> None:
    """Check values before any work starts; report every problem at once."""
    problems = []
    for key in ("batch_size", "block_size", "n_layer", "n_head", "n_embd", "gradient_accumulation_steps",
                "eval_interval", "eval_iters", "log_interval"):
        if getattr(cfg, key) <= 0:
            problems.append(f"'{key}' must be a positive integer, got {getattr(cfg, key)}")
    for key in ("max_iters", "warmup_iters", "min_lr", "weight_decay", "grad_clip", "early_stop_patience", "l1"):
        if getattr(cfg, key) < 0:
            problems.append(f"'{key}' must be >= 0, got {getattr(cfg, key)}")
    if cfg.n_head > 0 and cfg.n_embd % cfg.n_head != 0:
        problems.append(f"'n_embd' ({cfg.n_embd}) must be divisible by 'n_head' ({cfg.n_head}): "
                        f"each head gets n_embd / n_head dimensions")
    if cfg.position_encoding == "rope" and cfg.n_head > 0 and cfg.n_embd % cfg.n_head == 0 \
            and (cfg.n_embd // cfg.n_head) % 2:
        problems.append(f"position_encoding 'rope' turns pairs of dimensions, so each head needs an even size: "
                        f"n_embd / n_head is {cfg.n_embd // cfg.n_head}")
    if not 0 <= cfg.label_smoothing < 1:
        problems.append(f"'label_smoothing' must be in [0, 1), got {cfg.label_smoothing}")
    if not 0 < cfg.wsd_decay_fraction <= 1:
        problems.append(f"'wsd_decay_fraction' must be in (0, 1], got {cfg.wsd_decay_fraction}")
    if not 0 <= cfg.dropout < 1:
        problems.append(f"'dropout' must be in [0, 1), got {cfg.dropout}")
    if not cfg.learning_rate > 0:
        problems.append(f"'learning_rate' must be > 0, got {cfg.learning_rate}")
    elif cfg.min_lr > cfg.learning_rate:
        problems.append(f"'min_lr' ({cfg.min_lr}) must not exceed 'learning_rate' ({cfg.learning_rate})")
    for key in ("beta1", "beta2", "momentum", "ema"):
        if not 0 <= getattr(cfg, key) < 1:
            problems.append(f"'{key}' must be in [0, 1), got {getattr(cfg, key)}")
    if cfg.optimizer in ("sgd", "muon") and cfg.nesterov and cfg.momentum == 0:
        problems.append(f"'nesterov' needs momentum: set --momentum above 0 (e.g. 0.9) or --nesterov=false "
                        f"for plain {cfg.optimizer}")
    if not cfg.muon_learning_rate > 0:
        problems.append(f"'muon_learning_rate' must be > 0, got {cfg.muon_learning_rate}")
    if cfg.lr_decay_iters < -1:
        problems.append(f"'lr_decay_iters' must be >= 0, or -1 for max_iters; got {cfg.lr_decay_iters}")
    device = cfg.device
    if not (device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
        problems.append(f"'device' must be auto, cpu, cuda, cuda:N or mps, got '{device}'")
    if cfg.compile is False and cfg.compile_mode != "default":
        problems.append(f"'compile_mode' {cfg.compile_mode} is a torch.compile mode, but compile is false: "
                        f"set --compile=true or leave compile_mode out")
    if problems:
        raise UsageError(problems)


def load_config(argv=None) -> TrainConfig:
    config_path, options = split_argv(argv)
    cfg = build_config(TrainConfig, config_path, parse_overrides(options))
    validate(cfg)
    return cfg


def resolve_device(requested: str) -> str:
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device '{requested}' asked for, but this machine has no CUDA GPU: use --device=cpu")
    if requested.startswith("cuda:") and int(requested[5:]) >= torch.cuda.device_count():
        raise UsageError(f"device '{requested}' asked for, but there are only {torch.cuda.device_count()} GPUs")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise UsageError("device 'mps' asked for, but this machine has no Apple GPU: use --device=cpu")
    return requested


def resolve_dtype(requested: str, device: str) -> str:
    if requested == "auto":
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if requested == "float16" and not device.startswith("cuda"):
        raise UsageError(f"dtype 'float16' needs a CUDA GPU (it trains with a grad scaler); on {device} use "
                         "--dtype=float32 or --dtype=bfloat16")
    if requested == "bfloat16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise UsageError("dtype 'bfloat16' is not supported by this GPU: use --dtype=float16")
    return requested


# ----------------------------------------------------------------------------------------------------------------------
# Data

def load_meta(data_dir: str) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise UsageError(f"{path} not found: run prepare_shakespeare.py first (or point --data_dir at prepared data)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        vocab = meta["vocab"]
        assert isinstance(vocab, list) and all(isinstance(c, str) for c in vocab)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise UsageError(f"{path} is corrupt (no readable 'vocab' list): run prepare_shakespeare.py again") from None
    return meta


def load_split(data_dir: str, split: str, meta: dict, device: str) -> tuple[torch.Tensor, str]:
    """Read data_dir/<split>.bin into memory (on the training device) as int64 token ids, with its sha256.

    The file is checked against meta.json: its token count and sha256 (written by prepare_shakespeare.py) catch a
    truncated or damaged file, and every id must be inside the vocabulary."""
    path = Path(data_dir) / f"{split}.bin"
    if not path.exists():
        raise UsageError(f"{path} not found: run prepare_shakespeare.py first (or point --data_dir at prepared data)")
    raw = path.read_bytes()
    sha256 = hashlib.sha256(raw).hexdigest()
    expected_tokens = meta.get(f"{split}_tokens")
    if len(raw) % 2 or (expected_tokens is not None and len(raw) // 2 != expected_tokens):
        raise UsageError(f"{path} is truncated: it has {len(raw):,} bytes, meta.json expects "
                         f"{expected_tokens * 2 if expected_tokens is not None else 'an even number of'}; "
                         "run prepare_shakespeare.py again")
    expected_sha256 = meta.get(f"{split}_sha256")
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise UsageError(f"{path} is corrupt: its sha256 differs from the one in meta.json; "
                         "run prepare_shakespeare.py again")
    ids = np.frombuffer(raw, dtype=np.uint16)
    vocab_size = len(meta["vocab"])
    if ids.size and int(ids.max()) >= vocab_size:
        raise UsageError(f"{path} holds token id {int(ids.max())} but meta.json's vocabulary has {vocab_size}: "
                         "the data and its meta.json do not match; run prepare_shakespeare.py again")
    return torch.from_numpy(ids.astype(np.int64)).to(device), sha256


def get_batch(data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator):
    """Random windows of block_size + 1 tokens: x is each window's first block_size, y the same shifted by one."""
    ix = batch_starts(data, block_size, batch_size, generator)  # (B,)
    offsets = torch.arange(block_size + 1, device=data.device)  # (T+1,)
    windows = data[ix[:, None] + offsets]  # (B, T+1)
    return windows[:, :-1], windows[:, 1:]


def batch_starts(data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """batch_size random window starts, each with room for block_size + 1 tokens from it: get_batch's draw."""
    return torch.randint(len(data) - block_size, (batch_size,), generator=generator, device=data.device)  # (B,)


EVAL_TOKENS_PER_BATCH = 16384  # tokens per forward pass when evaluating the val split


@torch.no_grad()
def evaluate_split(model, data: torch.Tensor, block_size: int, batch_size: int, autocast) -> dict:
    """Next-token metrics over the whole split, in non-overlapping windows of block_size.

    Returns the mean cross-entropy `loss`, top-1 and top-5 accuracy (`acc`, `top5`) and `confusion`, a
    (vocab, vocab) count of (target, top-1 prediction) pairs on the CPU. Deterministic: the same weights always give
    the same numbers. The last, shorter window covers the remainder, so every target counts once.
    """
    n_targets = len(data) - 1
    n_full = n_targets // block_size
    x_full = data[:n_full * block_size].view(n_full, block_size)  # (N, T)
    y_full = data[1:n_full * block_size + 1].view(n_full, block_size)  # (N, T)
    chunks = [(x_full[i:i + batch_size], y_full[i:i + batch_size]) for i in range(0, n_full, batch_size)]
    if n_targets > n_full * block_size:
        chunks.append((data[n_full * block_size:-1][None], data[n_full * block_size + 1:][None]))
    loss_sum = torch.zeros((), dtype=torch.float64, device=data.device)
    top5_hits = torch.zeros((), dtype=torch.long, device=data.device)
    confusion = 0
    for x, y in chunks:
        with autocast:
            logits, _ = model(x)
        vocab_size = logits.size(-1)
        logits = logits.float().view(-1, vocab_size)  # (B*T, V)
        y = y.reshape(-1)  # (B*T,)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        top = logits.topk(min(5, vocab_size), dim=-1).indices  # (B*T, 5)
        top5_hits += (top == y[:, None]).any(dim=-1).sum()
        confusion = confusion + torch.bincount(y * vocab_size + top[:, 0], minlength=vocab_size * vocab_size)
    confusion = confusion.view(vocab_size, vocab_size).cpu()
    return {"loss": (loss_sum / n_targets).item(), "acc": confusion.diagonal().sum().item() / n_targets,
            "top5": top5_hits.item() / n_targets, "confusion": confusion}


def classification_metrics(confusion: torch.Tensor) -> dict:
    """Macro precision, recall and F1 over characters from a (target, prediction) count matrix.

    Averaged over the characters that occur as targets; a character never predicted has precision 0.
    """
    confusion = confusion.double()
    true_positives = confusion.diagonal()
    support = confusion.sum(dim=1)  # how often each character is the target
    predicted = confusion.sum(dim=0)  # how often each character is predicted
    present = support > 0
    precision = torch.where(predicted > 0, true_positives / predicted.clamp(min=1), 0.0)
    recall = true_positives / support.clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    return {"precision_macro": precision[present].mean().item(), "recall_macro": recall[present].mean().item(),
            "f1_macro": f1[present].mean().item()}


@torch.no_grad()
def estimate_train_loss(model, data, block_size, batch_size, n_batches, generator, autocast) -> float:
    losses = torch.zeros(n_batches, device=data.device)
    for k in range(n_batches):
        x, y = get_batch(data, block_size, batch_size, generator)
        with autocast:
            _, loss = model(x, y)
        losses[k] = loss.float()
    return losses.mean().item()


# ----------------------------------------------------------------------------------------------------------------------
# Optimization

def model_config_from(cfg: TrainConfig, vocab_size: int) -> GPTConfig:
    """The model a run of cfg trains: the TrainConfig keys that shape it (they have the same names in GPTConfig)."""
    shape = {f.name: getattr(cfg, f.name) for f in fields(GPTConfig) if f.name != "vocab_size"}
    return GPTConfig(vocab_size=vocab_size, **shape)


def get_lr(it: int, learning_rate: float, min_lr: float, warmup_iters: int, lr_decay_iters: int,
           schedule: str = "cosine", wsd_decay_fraction: float = 0.2) -> float:
    """Linear warmup for warmup_iters steps, then a decay to min_lr at lr_decay_iters, then flat at min_lr.

    cosine: half a cosine wave from learning_rate to min_lr. linear: a straight line. constant: no decay at all (the
    rate stays learning_rate). wsd (warmup-stable-decay): flat at learning_rate, then a straight line to min_lr over
    the last wsd_decay_fraction of the steps, so a run can be branched off at any point before its decay begins."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if schedule == "constant":
        return learning_rate
    if it >= lr_decay_iters:
        return min_lr
    if schedule == "wsd":
        decay_start = lr_decay_iters - wsd_decay_fraction * (lr_decay_iters - warmup_iters)
        progress = max(it - decay_start, 0.0) / max(lr_decay_iters - decay_start, 1e-9)  # 0 until the decay, -> 1
        return learning_rate - progress * (learning_rate - min_lr)
    progress = (it - warmup_iters) / (lr_decay_iters - warmup_iters)  # 0 -> 1
    if schedule == "linear":
        return learning_rate - progress * (learning_rate - min_lr)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


def mixed_precision(device_type: str, dtype: str):
    """(autocast context, grad scaler) for training in dtype; the scaler only does anything for float16, whose
    small range needs the loss scaled up so that small gradients do not round to zero."""
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    autocast = nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type=device_type, dtype=ptdtype)
    return autocast, torch.amp.GradScaler(device_type, enabled=ptdtype == torch.float16)


def optimizer_step(optimizer, scaler, params, grad_clip: float) -> None:
    """Apply the accumulated gradients: unscale, clip their norm to grad_clip (0 = no clipping), step, clear."""
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def weight_matrices(model) -> list[torch.nn.Parameter]:
    """The trained parameters with two or more dimensions (embeddings, Linear weights): the ones weight decay and
    the L1 penalty apply to; biases and norm gains are left alone."""
    return [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]


def make_optimizer(model, learning_rate, weight_decay, betas, fused: bool, kind: str = "adamw",
                   momentum: float = 0.9, nesterov: bool = True, muon_learning_rate: float = 0.02):
    """The optimizer `kind` (adamw, sgd or muon), with weight decay on matrices (embeddings, Linear weights) only,
    not on biases and norm gains.

    Each parameter group carries lr_scale: its peak learning rate over learning_rate, which the training loop
    multiplies the scheduled rate by. Only Muon's group differs from 1 (muon_learning_rate / learning_rate)."""
    decay = weight_matrices(model)
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    if kind == "muon":
        # Muon takes the matrices inside the transformer blocks; the embeddings (and the output layer, tied to or
        # beside them) keep AdamW.
        hidden_ids = {id(p) for name, p in model.named_parameters() if ".h." in f".{name}" and p.dim() == 2}
        hidden = [p for p in decay if id(p) in hidden_ids]
        groups = [{"params": hidden, "weight_decay": weight_decay, "use_muon": True,
                   "lr_scale": muon_learning_rate / learning_rate},
                  {"params": [p for p in decay if id(p) not in hidden_ids], "weight_decay": weight_decay,
                   "lr_scale": 1.0},
                  {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
        return Muon([g for g in groups if g["params"]], lr=learning_rate, momentum=momentum, nesterov=nesterov,
                    betas=betas)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, nesterov=nesterov)
    assert kind == "adamw", f"unknown optimizer {kind!r}"
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)


def l1_norm(matrices) -> torch.Tensor:
    """The sum of the absolute values of every entry of the given weight matrices: the L1 penalty before its
    coefficient. Its gradient, sign(W), pulls every weight towards zero by the same amount, so small weights reach
    exactly zero, where weight decay only shrinks each weight in proportion to its size."""
    return sum(p.abs().sum() for p in matrices)


def update_ema(ema_model, model, decay: float, iter_num: int) -> None:
    """Move the averaged weights a step towards the model's: ema = d * ema + (1 - d) * weights.

    d ramps up as (1 + t) / (10 + t) to `decay`: early on the average would otherwise be mostly the random
    initial weights for the ~1 / (1 - decay) steps it takes to forget them."""
    d = min(decay, (1 + iter_num) / (10 + iter_num))
    with torch.no_grad():
        torch._foreach_lerp_(list(ema_model.parameters()), [p.detach() for p in model.parameters()], 1 - d)


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints and run records

def save_atomic(obj, path: Path) -> None:
    """torch.save to a temp file, fsync, then rename: a crash leaves the old file or the new one, never half of one.

    A full disk (or any other write error) removes the temp file and ends the run with a message; the previous
    checkpoint is untouched."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        # torch's zip writer reports a failed write of a large record as a RuntimeError
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and "failed writing" in str(e)):
            reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
            kept = f"the previous {path.name} is untouched" if path.exists() else f"no {path.name} was written"
            fix = ("free some disk space" if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
                   else "check that out_dir is writable")
            raise UsageError(f"could not write {path}: {reason}; {kept}. To go on, {fix} and run the same command "
                             "with --init_from=resume (or from scratch if out_dir has no ckpt.pt)") from None
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_checkpoint(path: Path, device: str = "cpu") -> dict:
    """Load one of our checkpoints safely (weights_only: no code runs) or explain what is wrong with it."""
    if not path.exists():
        raise UsageError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses any object that is not a tensor or plain data before building it: such a file
        # could run code when loaded, and a checkpoint of this harness never holds one.
        raise UsageError(f"checkpoint {path} was refused: it holds Python objects other than tensors and plain data, "
                         "which could run code when loaded. Only load checkpoints made by train.py") from None
    except Exception as e:  # a truncated or foreign file surfaces as many exception types; all mean "unreadable"
        raise UsageError(f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                         "it may be truncated or not a checkpoint") from None
    if isinstance(ckpt, dict) and "model_args" in ckpt and "format_version" not in ckpt:
        return from_nanogpt(ckpt, path)
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise UsageError(f"checkpoint {path} is not a checkpoint of this harness (no format_version)")
    if ckpt["format_version"] != CHECKPOINT_FORMAT_VERSION:
        raise UsageError(f"checkpoint {path} has format version {ckpt['format_version']}, this code reads version "
                         f"{CHECKPOINT_FORMAT_VERSION}")
    return ckpt


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numbers only: any other object (which could run code) is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def read_nanogpt_meta(path: Path) -> list[str]:
    """The vocabulary (id -> character) from nanoGPT's meta.pkl, read without running any code in it."""
    try:
        with open(path, "rb") as f:
            meta = _PlainDataUnpickler(f).load()
        itos = meta["itos"]
        return [itos[i] for i in range(meta["vocab_size"])]
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path} is not a readable nanoGPT meta.pkl ({type(e).__name__}: {e})") from None


def from_nanogpt(ckpt: dict, path: Path) -> dict:
    """A nanoGPT ckpt.pt in this harness's layout. The module names are the same (both follow GPT-2), so only
    torch.compile's '_orig_mod.' prefix goes; the vocabulary comes from nanoGPT's meta.pkl, looked for beside the
    checkpoint and then in nanoGPT's data/<dataset>/ folder."""
    dataset = (ckpt.get("config") or {}).get("dataset", "")
    candidates = [path.parent / "meta.pkl"] + ([Path("data") / dataset / "meta.pkl"] if dataset else [])
    meta_path = next((p for p in candidates if p.exists()), None)
    if meta_path is None:
        raise UsageError(f"{path} is a nanoGPT checkpoint, and its vocabulary is in nanoGPT's meta.pkl: copy "
                         f"data/{dataset or '<dataset>'}/meta.pkl from nanoGPT next to {path.name}")
    args = ckpt["model_args"]
    config = ckpt.get("config") or {}
    iter_num = int(ckpt.get("iter_num", 0))
    tokens_per_iter = (config.get("batch_size", 0) * config.get("block_size", 0)
                       * config.get("gradient_accumulation_steps", 0))
    model_config = {k: args[k] for k in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias")}
    vocab = read_nanogpt_meta(meta_path)
    if len(vocab) != model_config["vocab_size"]:
        raise UsageError(f"{meta_path} has {len(vocab)} characters but {path} was trained with "
                         f"vocab_size {model_config['vocab_size']}: use the meta.pkl of the data it was trained on")
    return {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "source": "nanoGPT",
        # nanoGPT without flash attention also saved its causal mask, as the buffer 'attn.bias': not a weight.
        "model": {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items() if not k.endswith(".attn.bias")},
        "model_config": model_config,
        "vocab": vocab,
        "iter_num": iter_num,
        "best_val_loss": float(ckpt.get("best_val_loss", float("nan"))),
        # What init_from=resume needs. nanoGPT keeps no RNG states, best iteration or elapsed time.
        "optimizer": ckpt.get("optimizer") or None,
        "best_iter": None,
        "tokens_seen": iter_num * tokens_per_iter,
        "elapsed_s": 0.0,
        "evals_since_best": 0,
        "rng": None,
    }


# The settings that give the model its weights' shapes and meaning: a checkpoint only resumes with the same ones.
MODEL_SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "norm", "qk_norm", "tie_weights", "mlp",
                    "position_encoding")
GPTCONFIG_DEFAULTS = asdict(GPTConfig())


def check_resumable(ckpt: dict, path: Path, cfg: TrainConfig, vocab: list[str], data_info: dict) -> None:
    """Refuse to resume from a checkpoint whose model shape, vocabulary or data differ from this run's."""
    if ckpt.get("optimizer") is None:
        raise UsageError(f"{path} holds no optimizer state, so it cannot be resumed: start a new run with "
                         "--init_from=scratch")
    # Keys added after a checkpoint was written are absent from it: it was trained with their defaults.
    saved = GPTCONFIG_DEFAULTS | ckpt["model_config"]
    problems = [f"cannot resume from {path}: its model has {key} {saved[key]}, this run asks for "
                f"{getattr(cfg, key)} (set --{key}={saved[key]} or start a new run)"
                for key in MODEL_SHAPE_KEYS if saved[key] != getattr(cfg, key)]
    if ckpt["vocab"] != vocab:
        problems.append(f"cannot resume from {path}: the vocabulary in {cfg.data_dir}/meta.json "
                        f"({len(vocab)} characters) differs from the checkpoint's ({len(ckpt['vocab'])}); "
                        "point --data_dir at the data it was trained on")
    saved_data = ckpt.get("data")  # absent in checkpoints from nanoGPT
    if saved_data is not None:
        for split in ("train", "val"):
            if saved_data[f"{split}_sha256"] != data_info[f"{split}_sha256"]:
                problems.append(
                    f"cannot resume from {path}: {cfg.data_dir}/{split}.bin ({data_info[f'{split}_tokens']:,} "
                    f"tokens, sha256 {data_info[f'{split}_sha256'][:12]}) is not the data it was trained on "
                    f"({saved_data[f'{split}_tokens']:,} tokens, sha256 {saved_data[f'{split}_sha256'][:12]}); "
                    "point --data_dir at that data or start a new run")
    saved_optimizer = (ckpt.get("train_config") or {}).get("optimizer", "adamw")  # nanoGPT's is AdamW
    if saved_optimizer != cfg.optimizer:
        problems.append(f"cannot resume from {path}: it was trained with optimizer {saved_optimizer}, this run asks "
                        f"for {cfg.optimizer} (set --optimizer={saved_optimizer} or start a new run)")
    if problems:
        raise UsageError(problems)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state, refusing one whose per-parameter tensors do not fit the model.

    Every group's settings (betas, weight decay, momentum, fused, ...) stay this run's: a saved state would bring its
    own. That also sets decoupled weight decay explicitly for AdamW states saved by older PyTorch versions, which lack
    the flag and would otherwise load as Adam with L2."""
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, settings):
        group.update(own)
        for p in group["params"]:
            moments = optimizer.state.get(p, {})
            for name, value in moments.items():
                if name != "step" and isinstance(value, torch.Tensor) and value.shape != p.shape:
                    raise UsageError(f"the checkpoint's optimizer state does not fit the model ({name} of shape "
                                     f"{tuple(value.shape)} for a parameter of shape {tuple(p.shape)}): "
                                     "it was saved with another parameter order; start a new run")
            step = moments.get("step")
            if isinstance(step, torch.Tensor):  # torch's AdamW keeps it as a tensor; on the device if fused
                on_device = group.get("fused") or group.get("capturable")
                moments["step"] = step.to(device=p.device if on_device else "cpu", dtype=torch.float32)


def rng_state(batch_gen: torch.Generator, device: str) -> dict:
    """Every random-number generator's state, as tensors and plain data (loadable with weights_only)."""
    np_state = np.random.get_state(legacy=False)  # {'bit_generator', 'state': {'key', 'pos'}, 'has_gauss', 'gauss'}
    return {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"], "key": np_state["state"]["key"].tolist(),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(torch.device(device)) if device.startswith("cuda") else None,
        "batch": batch_gen.get_state(),
    }


def restore_rng(state: dict, batch_gen: torch.Generator, device: str) -> None:
    if "python" in state:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state({"bit_generator": s["bit_generator"], "has_gauss": s["has_gauss"], "gauss": s["gauss"],
                             "state": {"key": np.array(s["key"], dtype=np.uint32), "pos": s["pos"]}})
    torch.set_rng_state(state["torch"].cpu())
    batch_gen.set_state(state["batch"].cpu())
    if device.startswith("cuda") and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), torch.device(device))


def trim_metrics(path: Path, iter_num: int) -> None:
    """Keep the metrics of evaluations up to iter_num, the checkpoint's: a run killed after logging an evaluation
    but before saving it logs that evaluation again when resumed. A line cut short by the kill goes too."""
    if not path.exists():
        path.write_text("")
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("iter", iter_num + 1) <= iter_num:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def perplexity(loss: float) -> float:
    """exp(loss), rounded; infinite where exp overflows (a loss above ~709 nats: a model far from trained)."""
    return round(math.exp(loss), 4) if loss < 700 else float("inf")


def divergence_error(what: str, value: float, iter_num: int, lr: float, out_dir: Path, best_iter) -> UsageError:
    """The one line for a NaN or inf loss: where it happened, the learning rate, and that no checkpoint was touched."""
    saved_best = best_iter is not None and best_iter > 0  # best.pt is first written after iter 0
    kept = (f"{out_dir / 'best.pt'} still holds iter {best_iter}'s weights" if saved_best
            else "no checkpoint was written")
    return UsageError(f"the {what} became {value} at iter {iter_num} (learning rate {lr:.3g}): training diverged. "
                      f"Lower learning_rate or raise warmup_iters; {kept}")


def summarize_run(metrics: list[dict], classification: dict, *, run: str, out_dir: str, status: str, params: int,
                  max_iters: int, wall_time_s: float, tokens_per_s: float) -> dict:
    """summary.json: the best and final evaluations, the train/val gap, and whether the val loss rose after its best."""
    best = min(metrics, key=lambda m: m["val_loss"])
    final = metrics[-1]
    rise = final["val_loss"] - best["val_loss"]
    return {
        "run": run,
        "out_dir": out_dir,
        "status": status,
        "params": params,
        "iters": final["iter"],
        "max_iters": max_iters,
        "best_val_loss": best["val_loss"],
        "best_iter": best["iter"],
        "best_val_ppl": best["val_ppl"],
        "final": {k: final[k] for k in ("iter", "train_loss", "val_loss", "val_ppl", "val_bpc", "val_acc", "val_top5")}
                 | {k: round(v, 6) for k, v in classification.items()},
        "gap_at_best": round(best["val_loss"] - best["train_loss"], 6),
        "gap_at_end": round(final["val_loss"] - final["train_loss"], 6),
        "overfit": rise > OVERFIT_MARGIN,
        "val_rise_after_best": round(rise, 6),
        "wall_time_s": round(wall_time_s, 3),
        "tokens": final["tokens"],
        "tokens_per_s": round(tokens_per_s, 1),
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    if device == "cpu":
        return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    return device


class StopRequest:
    """Ctrl-C or SIGTERM asks the loop to stop after the current step and save; a second one stops at once.

    Under torchrun the signal reaches torchrun, which passes it on to every process; announce=False (ranks > 0) keeps
    them from all printing the same message."""

    def __init__(self, announce: bool = True):
        self.requested = False
        self.announce = announce
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            if self.announce:
                tqdm.write("second stop request: quitting at once. Checkpoints already written stay as they were")
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            tqdm.write("stop requested: finishing this step and saving ckpt.pt (press Ctrl-C again to quit at once)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def format_duration(seconds: float) -> str:
    minutes, s = divmod(seconds, 60)
    return f"{int(minutes)}m {s:04.1f}s" if minutes else f"{s:.1f}s"


# ----------------------------------------------------------------------------------------------------------------------
# Several processes: torchrun and DistributedDataParallel

def distributed_env(environ) -> tuple[int, int, int] | None:
    """(rank, local_rank, world_size) from the variables torchrun sets in each process it starts; None without."""
    try:
        rank = int(environ.get("RANK", -1))
        if rank == -1:
            return None
        return rank, int(environ["LOCAL_RANK"]), int(environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        raise UsageError("the environment sets RANK, so RANK, LOCAL_RANK and WORLD_SIZE must all be integers: start "
                         "several processes with torchrun, which sets all three, or unset RANK to train in one "
                         "process") from None


def micro_steps_per_rank(gradient_accumulation_steps: int, world_size: int) -> int:
    """Each process's share of an optimizer step's micro-batches (gradient_accumulation_steps counts all of them)."""
    if gradient_accumulation_steps % world_size:
        multiple = -(-gradient_accumulation_steps // world_size) * world_size
        raise UsageError(f"gradient_accumulation_steps ({gradient_accumulation_steps}) must be divisible by the number "
                         f"of processes ({world_size}): it counts the micro-batches of one step over all processes, "
                         f"and each takes an equal share. Set --gradient_accumulation_steps={multiple} (or another "
                         f"multiple of {world_size}), or start a number of processes that divides it")
    return gradient_accumulation_steps // world_size


def resolve_ddp_device(requested: str, local_rank: int) -> str:
    """Under torchrun each process trains on its own GPU, cuda:LOCAL_RANK, or on the CPU; auto prefers CUDA."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested != "cuda":
        raise UsageError(f"device '{requested}' cannot be used under torchrun: each process takes the GPU "
                         "cuda:LOCAL_RANK (--device=cuda or auto) or the CPU (--device=cpu)")
    resolve_device("cuda")  # explains a machine without CUDA
    if local_rank >= torch.cuda.device_count():
        raise UsageError(f"torchrun started a process with LOCAL_RANK {local_rank}, but this machine has "
                         f"{torch.cuda.device_count()} GPUs: use --nproc_per_node={torch.cuda.device_count()} or fewer")
    return f"cuda:{local_rank}"


def any_rank(flag: bool, group) -> bool:
    """True on every rank when it is True on any: all ranks must leave the loop at the same step, or those still in
    it would wait forever for the others in the next gradient all-reduce."""
    t = torch.tensor([float(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


def mean_over_ranks(value: float, world_size: int, group) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, group=group)  # a sum (gloo has no average), so a NaN on any rank reaches every rank
    return t.item() / world_size


def from_rank0(values: list[float], group) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.broadcast(t, src=0, group=group)
    return t.tolist()


# ----------------------------------------------------------------------------------------------------------------------
# The run

def main(argv=None):
    return run_command(train, argv, __doc__, TrainConfig)


def train(argv=None) -> dict | None:
    """One run, in this process or in each of the processes torchrun started; returns the summary (rank 0's only)."""
    cfg = load_config(argv)
    ranks = distributed_env(os.environ)
    if ranks is None:
        return train_process(cfg, argv, resolve_device(cfg.device))
    rank, local_rank, world_size = ranks
    micro_steps_per_rank(cfg.gradient_accumulation_steps, world_size)  # refused before any process waits for another
    device = resolve_ddp_device(cfg.device, local_rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)  # NCCL and the CUDA defaults then use this process's own GPU
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    try:
        # The ranks' small agreements (stop now? the evaluation's numbers) go through gloo on the CPU, so a rank
        # waiting on them never stalls its GPU.
        control_group = dist.new_group(backend="gloo") if device.startswith("cuda") else None
        return train_process(cfg, argv, device, ddp=True, rank=rank, world_size=world_size,
                             control_group=control_group)
    finally:
        dist.destroy_process_group()


def train_process(cfg: TrainConfig, argv, device: str, ddp: bool = False, rank: int = 0, world_size: int = 1,
                  control_group=None) -> dict | None:
    """The run as one process sees it: alone, or as rank `rank` of `world_size` DDP processes."""
    master_process = rank == 0  # the one that writes out_dir and prints
    micro_steps = micro_steps_per_rank(cfg.gradient_accumulation_steps, world_size)
    dtype = resolve_dtype(cfg.dtype, device)
    use_compile = device.startswith("cuda") if cfg.compile == "auto" else cfg.compile
    cuda_graphs = use_compile and cfg.compile_mode != "default" and device.startswith("cuda")  # both modes use them
    lr_decay_iters = cfg.max_iters if cfg.lr_decay_iters == -1 else cfg.lr_decay_iters
    device_type = "cuda" if device.startswith("cuda") else device
    out_dir = ensure_dir(cfg.out_dir)

    meta = load_meta(cfg.data_dir)
    vocab = meta["vocab"]
    train_data, train_sha256 = load_split(cfg.data_dir, "train", meta, device)
    val_data, val_sha256 = load_split(cfg.data_dir, "val", meta, device)
    # What the checkpoint remembers of the data, so a resume on other data is refused.
    data_info = {"train_tokens": len(train_data), "train_sha256": train_sha256,
                 "val_tokens": len(val_data), "val_sha256": val_sha256}
    for name, split in (("train", train_data), ("val", val_data)):
        if len(split) <= cfg.block_size:
            raise UsageError(f"block_size {cfg.block_size} needs more than {cfg.block_size} tokens in the {name} "
                             f"split, which has {len(split)}: lower block_size or use more text")

    ckpt = None
    if cfg.init_from == "resume":
        if not (out_dir / "ckpt.pt").exists():
            raise UsageError(f"cannot resume: {out_dir / 'ckpt.pt'} not found. Point --out_dir at the run to resume, "
                             "or leave out --init_from=resume to start a new run")
        ckpt = load_checkpoint(out_dir / "ckpt.pt", device)
        check_resumable(ckpt, out_dir / "ckpt.pt", cfg, vocab, data_info)

    # Seeds and the batch sampler's own generator: on CPU, the same seed gives the same run, and resume continues it.
    # Python's and NumPy's generators are unused by this loop, but seeded and saved for code added to it.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    batch_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls for any float32 work left outside autocast
        torch.backends.cudnn.allow_tf32 = True
    autocast, scaler = mixed_precision(device_type, dtype)

    model_config = model_config_from(cfg, len(vocab))
    raw_model = GPT(model_config).to(device)
    optimizer = make_optimizer(raw_model, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                               fused=device_type in ("cuda", "cpu"),  # AdamW: one kernel for all parameters
                               kind=cfg.optimizer, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               muon_learning_rate=cfg.muon_learning_rate)
    l1_matrices = weight_matrices(raw_model)
    iter_num, best_val_loss, best_iter, tokens_seen, elapsed_before = 0, float("inf"), None, 0, 0.0
    evals_since_best = 0  # for early stopping
    if ckpt is not None:
        # With ema on, "model" holds the averaged weights (the ones evaluated and sampled from) and "train_model"
        # the weights being trained.
        raw_model.load_state_dict(ckpt.get("train_model") or ckpt["model"])
        load_optimizer_state(optimizer, ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        iter_num, best_val_loss, best_iter = ckpt["iter_num"], ckpt["best_val_loss"], ckpt["best_iter"]
        tokens_seen, elapsed_before = ckpt["tokens_seen"], ckpt["elapsed_s"]
        evals_since_best = ckpt["evals_since_best"]
        if ckpt.get("rng") is not None:
            restore_rng(ckpt["rng"], batch_gen, device)
        elif master_process:
            print(f"{out_dir / 'ckpt.pt'} holds no random-number states (nanoGPT saves none): batches and dropout "
                  f"continue from seed {cfg.seed}, so this is not the exact run nanoGPT would have continued")
        # best.pt is written before ckpt.pt: if a crash came between the two, best.pt holds a better model than
        # ckpt.pt knows of, and it must not be overwritten by a worse one.
        if (out_dir / "best.pt").exists():
            best = load_checkpoint(out_dir / "best.pt", device)
            if best["best_val_loss"] < best_val_loss:
                best_val_loss, best_iter = best["best_val_loss"], best["iter_num"]
            best = None
        if master_process:
            trim_metrics(out_dir / "metrics.jsonl", iter_num)
    if rank > 0:
        # Every rank built the same initial weights from `seed`; from here each needs its own dropout masks. A
        # checkpoint holds rank 0's generator states only, so the other ranks reseed from their rank and the
        # iteration: a resumed run with dropout continues deterministically, but not bit for bit as the unbroken one.
        torch.manual_seed(cfg.seed + rank + world_size * iter_num)
    # The weight average, if any: a copy of the model that the optimizer never touches, only update_ema. A resumed
    # run starts it from the checkpoint's average, or from the weights if that run had none.
    ema_model = None
    if cfg.ema > 0 and master_process:
        ema_model = copy.deepcopy(raw_model).requires_grad_(False)
        if ckpt is not None and "train_model" in ckpt:
            ema_model.load_state_dict(ckpt["model"])
    ckpt = None  # free the loaded tensors before training
    model = torch.compile(raw_model, mode=cfg.compile_mode) if use_compile else raw_model
    # Only rank 0 evaluates, so not through the DDP wrapper, whose forward syncs with the others.
    eval_model = model if ema_model is None else \
        torch.compile(ema_model, mode=cfg.compile_mode) if use_compile else ema_model
    if ddp:
        model = DistributedDataParallel(model, device_ids=[torch.device(device)] if device_type == "cuda" else None)

    resolved = asdict(cfg) | {"device": device, "dtype": dtype, "compile": use_compile,
                              "lr_decay_iters": lr_decay_iters}
    run_info = {
        "argv": sys.argv if argv is None else ["train.py", *argv],
        "git_commit": git_commit() if master_process else None,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": device,
        "device_name": device_name(device),
        "world_size": world_size,  # processes under torchrun, each on its own device; 1 without
        "params": raw_model.num_params(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed_from_iter": iter_num if cfg.init_from == "resume" else None,
    }
    metrics_path = out_dir / "metrics.jsonl"
    # Evaluation needs no gradients, so it takes bigger batches than training: fewer, larger matrix products. 16k
    # tokens measured fastest on 2 CPU cores (of 1k to 64k) and keep a GPU's activations for them small.
    eval_batch_size = max(cfg.batch_size, EVAL_TOKENS_PER_BATCH // cfg.block_size)
    # Global: the micro-batches of all ranks together.
    tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    if master_process:
        (out_dir / "config.json").write_text(json.dumps(resolved, indent=1) + "\n")
        (out_dir / "run.json").write_text(json.dumps(run_info, indent=1) + "\n")
        if cfg.init_from == "scratch":
            # A new run in an old run's folder: remove what the old run left, so nothing stale passes for this run's.
            metrics_path.write_text("")
            for stale in ("summary.json", "best.pt", "ckpt.pt"):
                (out_dir / stale).unlink(missing_ok=True)
        print(f"{run_info['params'] / 1e6:.2f}M parameters | {device} ({run_info['device_name']}) | {dtype}"
              f"{' | compiled' if use_compile else ''}{f' | {world_size} processes' if ddp else ''} | "
              f"{tokens_per_iter:,} tokens per iteration | out_dir {out_dir}")

    def checkpoint_state(with_optimizer: bool) -> dict:
        state = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            # The uncompiled module's keys, loadable without torch.compile. The weights evaluated: the average if on.
            "model": (raw_model if ema_model is None else ema_model).state_dict(),
            "model_config": asdict(model_config),
            "train_config": resolved,
            "vocab": vocab,
            "iter_num": iter_num,
            "best_val_loss": best_val_loss,
            "best_iter": best_iter,
            "tokens_seen": tokens_seen,
            "elapsed_s": elapsed,
            "evals_since_best": evals_since_best,
            "data": data_info,
        }
        if with_optimizer:
            if ema_model is not None:
                state["train_model"] = raw_model.state_dict()
            state["optimizer"] = optimizer.state_dict()
            state["scaler"] = scaler.state_dict() if scaler.is_enabled() else None
            state["rng"] = rng_state(batch_gen, device)
        return state

    # ------------------------------------------------------------------------------------------------------------------
    # The training loop. Each pass: evaluate if due, stop if this was the last step, otherwise take one optimizer step.
    start_iter = iter_num
    started = time.perf_counter()
    elapsed = elapsed_before
    last_logged = (started, iter_num)
    stop_reason = None
    final_eval = None  # the last evaluation's full results, for summary.json
    with StopRequest(announce=master_process) as stop, \
            tqdm(total=cfg.max_iters, initial=iter_num, desc=out_dir.name, unit="it", dynamic_ncols=True,
                 disable=not master_process) as pbar:
        while True:
            last_step = iter_num >= cfg.max_iters
            elapsed = elapsed_before + time.perf_counter() - started
            # A resumed run already evaluated (and logged) the iteration it resumes from.
            already_evaluated = cfg.init_from == "resume" and iter_num == start_iter
            if (iter_num % cfg.eval_interval == 0 or last_step) and not already_evaluated:
                if master_process:
                    eval_model.eval()
                    eval_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1 + iter_num)
                    final_eval = evaluate_split(eval_model, val_data, cfg.block_size, eval_batch_size, autocast)
                    train_loss = estimate_train_loss(eval_model, train_data, cfg.block_size, cfg.batch_size,
                                                     cfg.eval_iters, eval_gen, autocast)
                    eval_model.train()
                    val_loss = final_eval["loss"]
                if ddp:
                    # Only rank 0 evaluates; the others wait here for its numbers, so that every rank takes the same
                    # decisions (diverged? improved? stop early?) at the same step.
                    val_loss, train_loss = from_rank0([val_loss, train_loss] if master_process else [0.0, 0.0],
                                                      control_group)
                lr_now = get_lr(max(iter_num - 1, 0), cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, lr_decay_iters,
                                cfg.lr_schedule, cfg.wsd_decay_fraction)
                for what, value in (("val loss", val_loss), ("train loss", train_loss)):
                    if not math.isfinite(value):  # checked before any save: a diverged model never overwrites one
                        raise divergence_error(what, value, iter_num, lr_now, out_dir, best_iter)
                improved = val_loss < best_val_loss
                if improved:
                    best_val_loss, best_iter, evals_since_best = val_loss, iter_num, 0
                else:
                    evals_since_best += 1
                if master_process:
                    record = {"iter": iter_num, "train_loss": round(train_loss, 6), "val_loss": round(val_loss, 6),
                              "val_ppl": perplexity(val_loss), "val_bpc": round(val_loss / math.log(2), 6),
                              "val_acc": round(final_eval["acc"], 6), "val_top5": round(final_eval["top5"], 6),
                              "lr": lr_now, "elapsed_s": round(elapsed, 3), "tokens": tokens_seen}
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    tqdm.write(f"iter {iter_num}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                               f"val accuracy {final_eval['acc']:.1%}{' (best)' if improved else ''}")
                    if iter_num > 0 and improved:
                        save_atomic(checkpoint_state(with_optimizer=False), out_dir / "best.pt")
                    if iter_num > 0 and (improved or cfg.always_save_checkpoint):
                        save_atomic(checkpoint_state(with_optimizer=True), out_dir / "ckpt.pt")
                if 0 < cfg.early_stop_patience <= evals_since_best and not last_step:
                    if master_process:
                        tqdm.write(f"early stop: no better val loss in {evals_since_best} evaluations "
                                   f"(best {best_val_loss:.4f} at iter {best_iter})")
                        save_atomic(checkpoint_state(with_optimizer=True), out_dir / "ckpt.pt")
                    stop_reason = "early_stopped"
                    break
            if last_step:
                break
            # Under DDP a signal may reach some ranks only, or reach them at different steps: they stop together.
            # Agreeing is a round trip between the processes, so it happens once per log_interval, like the loss read.
            if ddp:
                stopping = iter_num % cfg.log_interval == 0 and any_rank(stop.requested, control_group)
            else:
                stopping = stop.requested
            if stopping:
                if master_process:
                    save_atomic(checkpoint_state(with_optimizer=True), out_dir / "ckpt.pt")
                stop_reason = "interrupted"
                break

            lr = get_lr(iter_num, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, lr_decay_iters, cfg.lr_schedule,
                        cfg.wsd_decay_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            # Every rank draws all the step's micro-batches in turn from the same generator, trains on its own share
            # and only draws the window starts of the others'. Together the ranks train on exactly the batches one
            # process would, and the generator stays alike on every rank, so rank 0's checkpointed state fits them all.
            mine = range(rank * micro_steps, (rank + 1) * micro_steps)
            if cuda_graphs:
                # A new step: CUDA graphs may now reuse the memory of the last step's outputs. Its loss is no longer
                # needed: a log step reads it before the next step begins.
                torch.compiler.cudagraph_mark_step_begin()
            for micro_step in range(cfg.gradient_accumulation_steps):
                if micro_step not in mine:
                    batch_starts(train_data, cfg.block_size, cfg.batch_size, batch_gen)  # another rank's micro-batch
                    continue
                x, y = get_batch(train_data, cfg.block_size, cfg.batch_size, batch_gen)
                # DDP all-reduces the gradients in the backward of this rank's last micro-batch only; the others
                # accumulate locally.
                with model.no_sync() if ddp and micro_step != mine[-1] else nullcontext():
                    with autocast:
                        _, loss = model(x, y, label_smoothing=cfg.label_smoothing)
                    # The penalty joins the loss for the gradient only: the loss logged stays the cross-entropy.
                    objective = loss + cfg.l1 * l1_norm(l1_matrices) if cfg.l1 > 0 else loss
                    # Average over this rank's micro-batches, and DDP averages over the ranks: the gradient of the
                    # step's micro-batches as one big batch.
                    scaler.scale(objective / micro_steps).backward()
            optimizer_step(optimizer, scaler, raw_model.parameters(), cfg.grad_clip)
            if ema_model is not None:
                update_ema(ema_model, raw_model, cfg.ema, iter_num)
            iter_num += 1
            tokens_seen += tokens_per_iter

            if iter_num % cfg.log_interval == 0 or iter_num == cfg.max_iters:
                now = time.perf_counter()
                rate = (iter_num - last_logged[1]) * tokens_per_iter / max(now - last_logged[0], 1e-9)
                last_logged = (now, iter_num)
                loss_value = loss.item()  # the only host sync in the loop, once per log_interval
                if ddp:  # every rank must see a NaN on any of them, or only some would stop
                    loss_value = mean_over_ranks(loss_value, world_size, control_group)
                if not math.isfinite(loss_value):
                    raise divergence_error("training loss", loss_value, iter_num, lr, out_dir, best_iter)
                pbar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}", refresh=False)
                pbar.update(iter_num - pbar.n)

    elapsed = elapsed_before + time.perf_counter() - started
    tokens_per_s = (tokens_seen - start_iter * tokens_per_iter) / max(time.perf_counter() - started, 1e-9)
    if stop_reason == "interrupted":
        if master_process:
            launcher = "torchrun <the same torchrun options> train.py" if ddp else "python train.py"
            print(f"stopped at iter {iter_num}; saved {out_dir / 'ckpt.pt'}. Resume with: {launcher} "
                  f"{' '.join(a for a in (argv if argv is not None else sys.argv[1:]) if 'init_from' not in a)} "
                  f"--init_from=resume")
        if ddp:
            # torchrun ends every process once one exits with an error status: none may go before rank 0 has saved.
            dist.barrier(group=control_group)
        raise SystemExit(130)
    if not master_process:
        return None
    if final_eval is None:  # resumed at the very end: nothing was evaluated in this process
        eval_model.eval()
        final_eval = evaluate_split(eval_model, val_data, cfg.block_size, eval_batch_size, autocast)
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    summary = summarize_run(metrics, classification_metrics(final_eval["confusion"]), run=out_dir.name,
                            out_dir=str(out_dir), status=stop_reason or "finished", params=run_info["params"],
                            max_iters=cfg.max_iters, wall_time_s=elapsed, tokens_per_s=tokens_per_s)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"best val loss {summary['best_val_loss']:.4f} at iter {summary['best_iter']} | {iter_num} iters in "
          f"{format_duration(elapsed)} | {tokens_per_s:,.0f} tokens/s | val accuracy {summary['final']['val_acc']:.1%}"
          f"{' | early stopped' if stop_reason else ''}{' | overfitting' if summary['overfit'] else ''}"
          f" | results in {out_dir}")
    return summary


if __name__ == "__main__":
    main()
