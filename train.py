"""Train a character-level GPT.

    python train.py config/cpu.py                      # a small model on a CPU, in under a minute
    python train.py config/baseline.py                 # nanoGPT's Shakespeare-char recipe, for a GPU
    python train.py config/cpu.py --max_iters=500 --n_layer=2
    python train.py config/cpu.py --max_time=60        # 60 s of training, however fast the machine
    python train.py config/cpu.py --init_from=resume   # continue from out_dir/ckpt.pt
    python train.py config/finetune_richard.py         # a new run from a trained one's weights (docs/finetuning.md)
    torchrun --standalone --nproc_per_node=8 train.py config/baseline.py --gradient_accumulation_steps=8

Settings: the TrainConfig defaults below, then the config file's assignments, then --key=value overrides.
A run writes into out_dir: config.json, run.json, metrics.jsonl, summary.json, ckpt.pt and best.pt.

This file reads top to bottom: the settings, how a batch is drawn, the learning rate at each step, one training step,
the evaluation the loop calls, and the run: its setup, the loop and its ending. One step and one evaluation read here
and in model.py (the GPT). The rest of a run comes from modules of one concern each:
    configurator.py  settings, the command line          prepare_shakespeare.py  Tiny Shakespeare, on first use
    data.py          the prepared data, checked           finetune.py             from a trained run's weights
    optim.py         optimizers, L1, weight average       evaluate.py             an evaluation's windows and counts
    devices.py       device, precision, torchrun, stops   checkpoint.py           ckpt.pt and best.pt, resume
    runlog.py        the run record: its JSON files       files.py                one run at a time in an out_dir
    trackers.py      Weights & Biases and TensorBoard     sample.py               the text at evaluations
"""

import math
import time
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

import torch
from torch.nn.parallel import DistributedDataParallel

import devices
import finetune
import runlog
from checkpoint import RunState, check_finite, guard_writes, resume, save
from configurator import UsageError, build_config, parse_args, run_command
from data import load_data, remap_ids
from evaluate import classification_metrics, describe_reads, eval_batches, eval_splits, prediction_counts
from files import lock_folder
from model import GPT, GPTConfig, ModelConfig
from optim import ema_copy, l1_norm, make_optimizer, update_ema
from prepare_shakespeare import prepare_if_missing
from sample import evaluation_sample
from trackers import missing_packages, trackers


# ----------------------------------------------------------------------------------------------------------------------
# Settings

@dataclass
class TrainConfig(ModelConfig):
    """Every setting of a run: the model's (block_size, n_layer, n_head, n_embd, dropout, ...: model.ModelConfig, where
    they are declared) and these."""
    # I/O
    out_dir: str = "out/run"  # where this run's logs and checkpoints go
    data_dir: str = "data/shakespeare_char"  # holds train.bin, val.bin and meta.json from prepare_shakespeare.py
    init_from: str = "scratch"  # scratch: a new run; resume: go on from out_dir/ckpt.pt; a run folder: fine-tune it
    overwrite: bool = False  # a new run deletes the last run's files in out_dir (else moves them to out_dir-<time>)
    always_save_checkpoint: bool = True  # write ckpt.pt at every evaluation (false: only when val loss improves)
    freeze_layers: int = 0  # from a run folder: keep the embeddings and the first N blocks fixed; 0 = train all
    eval_only: bool = False  # evaluate the model once (as at the run's start) and stop, writing nothing
    # evaluation and logging
    eval_interval: int = 250  # optimizer steps between evaluations (there is always one at the last step)
    eval_at_start: bool = True  # evaluate the untrained model at iter 0 (false: one evaluation less to wait for)
    eval_iters: int = 200  # batches' worth of train tokens for the train loss (at most eval_tokens, fixed windows)
    eval_tokens: int = 120_000  # val tokens an evaluation reads at most, in fixed windows spread over the split; 0: all
    early_stop_patience: int = 0  # stop after this many evaluations without a better val loss; 0 = never
    target_loss: float = 0.0  # > 0: end the run at the first val loss at or below this; 0 = off
    target_eval_interval: int = 0  # with target_loss: steps between evaluations once near it; 0 = off
    eval_sample_chars: int = 100  # characters sampled at evaluations 0, 1, 2, 4, 8.. and the last; 0 = none
    log_interval: int = 10  # optimizer steps between progress-bar updates (each reads the loss: a host sync)
    wandb_log: bool = False  # also log each evaluation and the config to Weights & Biases (pip install wandb)
    wandb_project: str = "shakespeare-char"  # the Weights & Biases project
    wandb_run_name: str = ""  # the Weights & Biases run name; empty: out_dir's folder name
    tensorboard_log: bool = False  # also write each evaluation for TensorBoard, in out_dir/tensorboard
    # system
    device: str = "auto"  # auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 (else fp16) on CUDA, else float32
    compile: bool | Literal["auto"] = "auto"  # torch.compile the model; auto: on for CUDA only
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"  # reduce-overhead adds CUDA graphs
    seed: int = 1337  # seeds weights, batches and dropout: the same seed gives the same run on CPU
    # data
    batch_size: int = 64  # sequences per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step, over all processes under torchrun
    # optimizer
    optimizer: Literal["adamw", "sgd", "muon"] = "adamw"  # muon: Muon for the blocks' matrices, AdamW for the rest
    learning_rate: float = 1e-3  # peak learning rate (with muon: of the AdamW part)
    max_iters: int = 5000  # optimizer steps in total; with max_time: at most, and the schedule's scale
    max_time: float = 0.0  # seconds of training (evaluations not counted) after which the run ends; 0 = no budget
    weight_decay: float = 0.1  # decoupled weight decay, applied to weight matrices only (sgd: classic L2)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.99  # AdamW beta2
    momentum: float = 0.9  # sgd and muon: momentum coefficient
    nesterov: bool = True  # sgd and muon: Nesterov momentum (look ahead along the momentum)
    muon_learning_rate: float = 0.02  # muon: peak learning rate of the blocks' weight matrices
    grad_clip: float = 1.0  # clip the gradient norm to this; 0 = no clipping
    l1: float = 0.0  # L1 penalty coefficient on the weight matrices, added to the training loss; 0 = off
    ema: float = 0.0  # decay of an exponential moving average of the weights, evaluated and saved instead; 0 = off
    label_smoothing: float = 0.0  # share of each target's probability spread over all tokens in training; 0 = off
    # learning-rate schedule: linear warmup, then a decay to min_lr
    lr_schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"  # the decay's shape; wsd: flat, then linear
    warmup_iters: int = 100  # steps of linear warmup from 0 to learning_rate
    lr_decay_iters: int = -1  # step at which the decay reaches min_lr; -1 = max_iters
    min_lr: float = 1e-4  # learning rate at the end of the decay
    wsd_decay_fraction: float = 0.2  # wsd only: the share of the steps to lr_decay_iters spent decaying

    @property
    def tokens_per_iter(self) -> int:
        """Training tokens per optimizer step, over all processes."""
        return self.batch_size * self.block_size * self.gradient_accumulation_steps


def validate(cfg: TrainConfig) -> None:
    """Check values before any work starts; report every problem at once."""
    problems = []
    for key in ("batch_size", "block_size", "n_layer", "n_head", "n_embd", "gradient_accumulation_steps",
                "eval_interval", "eval_iters", "log_interval"):
        if getattr(cfg, key) <= 0:
            problems.append(f"'{key}' must be a positive integer, got {getattr(cfg, key)}")
    for key in ("max_iters", "max_time", "warmup_iters", "min_lr", "weight_decay", "grad_clip", "early_stop_patience",
                "l1", "eval_tokens", "target_loss", "target_eval_interval", "eval_sample_chars", "freeze_layers"):
        if getattr(cfg, key) < 0:
            problems.append(f"'{key}' must be >= 0, got {getattr(cfg, key)}")
    for key in ("learning_rate", "muon_learning_rate"):
        if not getattr(cfg, key) > 0:
            problems.append(f"'{key}' must be > 0, got {getattr(cfg, key)}")
    # A run from a trained model takes its shape from the checkpoint: a mix of given and default shape keys is no
    # model, and finetune.from_checkpoint reports a given key that differs from the checkpoint's.
    from_checkpoint = cfg.init_from not in ("scratch", "resume")
    if cfg.n_head > 0 and cfg.n_embd % cfg.n_head != 0 and not from_checkpoint:
        problems.append(f"'n_embd' ({cfg.n_embd}) must be divisible by 'n_head' ({cfg.n_head}): "
                        f"each head gets n_embd / n_head dimensions")
    if cfg.position_encoding == "rope" and cfg.n_head > 0 and cfg.n_embd % cfg.n_head == 0 \
            and (cfg.n_embd // cfg.n_head) % 2 and not from_checkpoint:
        problems.append(f"position_encoding 'rope' turns pairs of dimensions, so each head needs an even size: "
                        f"n_embd / n_head is {cfg.n_embd // cfg.n_head}")
    if not 0 < cfg.wsd_decay_fraction <= 1:
        problems.append(f"'wsd_decay_fraction' must be in (0, 1], got {cfg.wsd_decay_fraction}")
    if cfg.min_lr > cfg.learning_rate > 0:
        problems.append(f"'min_lr' ({cfg.min_lr}) must not exceed 'learning_rate' ({cfg.learning_rate})")
    for key in ("dropout", "label_smoothing", "beta1", "beta2", "momentum", "ema"):
        if not 0 <= getattr(cfg, key) < 1:
            problems.append(f"'{key}' must be in [0, 1), got {getattr(cfg, key)}")
    if cfg.optimizer in ("sgd", "muon") and cfg.nesterov and cfg.momentum == 0:
        problems.append(f"'nesterov' needs momentum: set --momentum above 0 (e.g. 0.9) or --nesterov=false "
                        f"for plain {cfg.optimizer}")
    if cfg.lr_decay_iters < -1:
        problems.append(f"'lr_decay_iters' must be >= 0, or -1 for max_iters; got {cfg.lr_decay_iters}")
    if devices.parse_device(cfg.device) is None:
        problems.append(f"'device' must be {devices.DEVICE_CHOICES}, got '{cfg.device}'")
    if cfg.freeze_layers > 0 and cfg.init_from == "scratch":
        problems.append("'freeze_layers' keeps trained layers fixed, and a run from scratch has none: give "
                        "--init_from the out_dir of a trained run, or leave freeze_layers out")
    if cfg.compile is False and cfg.compile_mode != "default":
        problems.append(f"'compile_mode' {cfg.compile_mode} is a torch.compile mode, but compile is false: "
                        f"set --compile=true or leave compile_mode out")
    problems += missing_packages(wandb_log=cfg.wandb_log, tensorboard_log=cfg.tensorboard_log)
    if problems:
        raise UsageError(problems)


def load_config(argv=None, given: set | None = None) -> TrainConfig:
    """The run's settings from the command line: at most one config file, then --key=value options (given, if passed,
    receives the keys they set). lr_decay_iters = -1 is resolved here to max_iters, so a config that changes max_iters
    stretches the schedule with it."""
    positional, options = parse_args(argv)
    if len(positional) > 1:
        raise UsageError(f"expected at most one config file, got {', '.join(positional)}")
    cfg = build_config(TrainConfig, positional[0] if positional else None, options, given=given)
    validate(cfg)
    return replace(cfg, lr_decay_iters=cfg.max_iters) if cfg.lr_decay_iters == -1 else cfg


# ----------------------------------------------------------------------------------------------------------------------
# Batches, the learning rate, when to evaluate, one step

def get_batch(data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator, device):
    """Random windows of block_size + 1 tokens: x is each window's first block_size, y the same shifted by one. data
    (data.place) is the split where it is kept: a memory map of the file, or a copy on the GPU."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator, device=data.device)  # (B,)
    offsets = torch.arange(block_size + 1, device=data.device)  # (T+1,)
    windows = data[ix[:, None] + offsets].to(device, torch.long)  # (B, T+1), on the training device
    return windows[:, :-1], windows[:, 1:]


def schedule_position(iter_num: int, train_s: float, cfg: TrainConfig) -> float:
    """Where the run is, in steps: iter_num, or with max_time the share of max_iters that train_s is of the budget,
    whichever is further. get_lr reads it, and the run ends when it reaches max_iters: a whole schedule in any time."""
    if cfg.max_time <= 0:
        return iter_num
    return max(iter_num, cfg.max_iters * train_s / cfg.max_time)


def get_lr(it: float, cfg: TrainConfig) -> float:
    """The rate at schedule_position it (with max_time, a fraction of a step too): linear warmup for warmup_iters
    steps, then a decay to min_lr at lr_decay_iters, then flat at min_lr. cosine: half a cosine wave from learning_rate
    to min_lr. linear: a straight line. constant: no decay at all (the rate stays learning_rate). wsd (warmup-stable-
    decay): flat, then a straight line to min_lr over the last wsd_decay_fraction of the steps, so a run can be
    branched off at any point before its decay begins."""
    lr, min_lr, warmup, decay_end = cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if cfg.lr_schedule == "constant":
        return lr
    if it >= decay_end:
        return min_lr
    if cfg.lr_schedule == "wsd":
        decay_start = decay_end - cfg.wsd_decay_fraction * (decay_end - warmup)
        progress = max(it - decay_start, 0.0) / max(decay_end - decay_start, 1e-9)  # 0 until the decay, -> 1
        return lr - progress * (lr - min_lr)
    progress = (it - warmup) / (decay_end - warmup)  # 0 -> 1
    if cfg.lr_schedule == "linear":
        return lr - progress * (lr - min_lr)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


NEAR_TARGET = 0.1  # nats above target_loss from which the training loss counts as near it


def eval_due(it: int, train_loss: float, cfg: TrainConfig) -> bool:
    """Whether the loop evaluates before step it: every eval_interval steps (at 0 only with eval_at_start), and with
    target_loss every target_eval_interval steps once the last training loss logged (free: the progress bar reads
    it) is within NEAR_TARGET of the target: a race finds the step it crosses the target to within a few."""
    if it == 0:
        return cfg.eval_at_start
    near = cfg.target_loss > 0 and cfg.target_eval_interval > 0 and train_loss <= cfg.target_loss + NEAR_TARGET
    return it % cfg.eval_interval == 0 or (near and it % cfg.target_eval_interval == 0)


def build(cfg: TrainConfig, vocab_size: int, device: str, fused: bool = True, weights: dict | None = None):
    """The model a run of cfg trains, on device, and its optimizer (fused AdamW, where PyTorch has it for the device:
    one kernel for all parameters; Muon's iteration compiled where the model is). fused=False: neither. weights: a
    trained model's, to start from (its vocabulary may be smaller)."""
    model_settings = {f.name: getattr(cfg, f.name) for f in fields(ModelConfig)}
    model = GPT(GPTConfig(vocab_size=vocab_size, **model_settings)).to(device)
    if weights is not None:
        finetune.load_pretrained(model, weights)
    finetune.freeze(model, cfg.freeze_layers)  # before the optimizer, which then leaves the frozen weights out
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                               fused=fused and devices.fused_adamw_available(device), kind=cfg.optimizer,
                               momentum=cfg.momentum, nesterov=cfg.nesterov, muon_learning_rate=cfg.muon_learning_rate,
                               compiled=fused and devices.resolve_compile(cfg.compile, device))
    return model, optimizer


def train_step(model, optimizer, scaler, autocast, train_data, batch_gen, cfg: TrainConfig, micro_steps: range):
    """One optimizer step: forward and backward over the step's micro-batches, then clip and step. Returns the last
    micro-batch's loss, as a tensor (reading it waits for the GPU). micro_steps: which of the
    gradient_accumulation_steps micro-batches this process trains on, all of them when it is alone. Under torchrun
    every process draws every micro-batch from the same generator and trains on its share, so that together they
    train on exactly the batches one process would."""
    device = next(model.parameters()).device  # batches go where the weights are
    if cfg.compile_mode != "default" and device.type == "cuda":  # compiled into CUDA graphs
        # A new step: the graphs may now reuse the memory of the last step's outputs (its loss was read if logged).
        torch.compiler.cudagraph_mark_step_begin()
    batches = [get_batch(train_data, cfg.block_size, cfg.batch_size, batch_gen, device)
               for _ in range(cfg.gradient_accumulation_steps)]
    for micro_step in micro_steps:
        x, y = batches[micro_step]  # (B, T) each
        # Under torchrun, DDP averages the gradients over the processes in the backward of the last micro-batch.
        last = micro_step == micro_steps[-1]
        with model.no_sync() if isinstance(model, DistributedDataParallel) and not last else nullcontext():
            with autocast:
                _, loss = model(x, y, label_smoothing=cfg.label_smoothing)
            # The L1 penalty joins the loss for the gradient only: the loss logged stays the cross-entropy.
            objective = loss + cfg.l1 * l1_norm(model) if cfg.l1 > 0 else loss
            # Averaged over the micro-batches (and, by DDP, the processes): the gradient of one big batch.
            scaler.scale(objective / len(micro_steps)).backward()
    if cfg.grad_clip > 0:
        scaler.unscale_(optimizer)  # clip the gradients themselves, not float16's scaled-up ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss


# ----------------------------------------------------------------------------------------------------------------------
# The evaluation

@torch.no_grad()
def estimate_loss(model, splits: dict, cfg: TrainConfig, autocast, stop=None) -> dict | None:
    """The mean loss over each split of eval_splits, in the same fixed windows every time (evaluate.split_windows).
    Returns "<split>_loss", "<split>_loss_tokens" (the targets it is over) and "<split>_counts" (what accuracies and
    F1 are drawn from); None when stop (devices.StopRequest) is requested: Ctrl-C cuts an evaluation within a batch."""
    device, out = next(model.parameters()).device, {}
    model.eval()
    for split, (data, max_tokens) in splits.items():
        loss_sum, counts, tokens = torch.zeros((), dtype=torch.float64, device=device), 0, 0
        for x, y, n in eval_batches(data, cfg.block_size, cfg.batch_size, max_tokens, device):  # (B, T) each
            if stop is not None and stop.requested:
                model.train()
                return None
            with autocast:
                logits, loss = model(x, y)  # (B, T, vocab_size); the mean loss over the n targets (not -1)
            loss_sum += loss.double() * n
            counts = counts + prediction_counts(logits, y)  # (4, vocab_size)
            tokens += n
        out |= {f"{split}_loss": (loss_sum / tokens).item(), f"{split}_loss_tokens": tokens,
                f"{split}_counts": counts.cpu()}
    model.train()
    return out


# ----------------------------------------------------------------------------------------------------------------------
# The run

def main(argv=None):
    return run_command(run, argv, __doc__, TrainConfig)


def run(argv=None) -> dict | None:
    """One run, or one of torchrun's processes: setup, loop, ending. Returns summary.json, None on ranks but 0."""
    # ---------------------------------------------------------------------------------------------------- setup
    given = set()
    cfg = load_config(argv, given)
    # From a trained run's folder, or resuming a run that started from one, the model's shape is its checkpoint's.
    cfg, pretrained = finetune.from_checkpoint(cfg, given)
    prepare_if_missing(cfg.data_dir)  # Tiny Shakespeare, on a fresh clone
    with ExitStack() as held:  # what the run holds until it ends, however it ends
        ranks = held.enter_context(devices.processes(cfg.device, cfg.gradient_accumulation_steps))
        device, out_dir = ranks.device, Path(cfg.out_dir)
        if ranks.master and not cfg.eval_only:
            held.enter_context(lock_folder(out_dir))  # one run at a time in an out_dir, until this one ends
        dtype, compiled = devices.resolve_dtype(cfg.dtype, device), devices.resolve_compile(cfg.compile, device)
        vocab, train_data, val_data, data_info = load_data(cfg.data_dir, device, cfg.block_size)
        # A trained model keeps its vocabulary, plus the data's new characters: the data's ids are mapped onto it.
        model_vocab, started_from = finetune.model_vocab(pretrained, vocab, cfg.freeze_layers)
        train_data, val_data = remap_ids(train_data, vocab, model_vocab), remap_ids(val_data, vocab, model_vocab)
        splits = eval_splits(train_data, val_data, cfg.eval_tokens, cfg.eval_iters, cfg.batch_size, cfg.block_size)
        batch_gen = devices.seed_everything(cfg.seed, str(train_data.device))  # on the device the data is kept on
        model, optimizer = build(cfg, len(model_vocab), device, weights=pretrained.weights if pretrained else None)
        autocast, scaler = devices.mixed_precision(device, dtype)
        state, ema_weights, resumed_at = RunState(), None, None
        if cfg.init_from == "resume":  # refused for a checkpoint of another shape, vocabulary, data or optimizer
            state, ema_weights = resume(out_dir, asdict(cfg), vocab, data_info, model, optimizer, scaler, batch_gen,
                                        announce=ranks.master)
            resumed_at = state.iter_num  # its evaluation there is logged already
        ranks.reseed(cfg.seed, state.iter_num)  # ranks but 0: their own dropout masks, from this step on
        # With ema, the weights evaluated and saved are an average of the trained ones. Only rank 0 evaluates.
        ema_model = ema_copy(model, ema_weights) if cfg.ema > 0 and ranks.master else None
        eval_model = model if ema_model is None else ema_model
        for module in {model, eval_model} if compiled else ():  # the one trained and the one evaluated, if another
            module.compile(mode=cfg.compile_mode)  # in place: its state_dict keeps its keys
        if cfg.eval_only:  # nanoGPT's key: evaluate once, print, write nothing
            return runlog.eval_only(estimate_loss(eval_model, splits, cfg, autocast), cfg.data_dir) \
                if ranks.master else None
        config = asdict(cfg) | {"device": device, "dtype": dtype, "compile": compiled}  # what the run records
        about = {"model_config": asdict(model.config), "train_config": config, "vocab": model_vocab,
                 "data": data_info, "started_from": started_from}
        if ranks.master:  # room for the checkpoints, or nothing starts; a file not written: what is kept, how to go on
            held.enter_context(guard_writes(out_dir, model, cfg.ema > 0, runlog.resume_command(argv, ranks.ddp)))
            info = runlog.run_info(argv, device, ranks.world_size, model.num_params(), resumed_at, started_from)
            runlog.start(out_dir, config, info, resumed_at, cfg.tokens_per_iter, cfg.overwrite)
            print(describe_reads(splits, cfg.block_size))
        track = held.enter_context(trackers(config, out_dir, on=ranks.master))  # wandb, tensorboard: those on
        stop = held.enter_context(devices.StopRequest(announce=ranks.master))  # Ctrl-C, SIGTERM
        bar = held.enter_context(runlog.progress_bar(out_dir.name, cfg.max_iters, cfg.max_time, state.iter_num,
                                                     state.elapsed_s - state.eval_s, show=ranks.master))
        step_model = ranks.wrap(model)  # DDP under torchrun; evaluation goes around it, as DDP's forward syncs
        micro_steps = ranks.micro_steps(cfg.gradient_accumulation_steps)  # this process's: all of them, alone

        # ----------------------------------------------------------------------------------------------------- loop
        t0, elapsed_before, tokens_before = time.perf_counter(), state.elapsed_s, state.tokens_seen
        status, evaluation, loss_value, lr = "finished", None, math.inf, get_lr(max(state.iter_num - 1, 0), cfg)
        while True:
            # the seconds of training so far (max_time's budget: rank 0's clock, for all processes) and the schedule
            train_s = elapsed_before + time.perf_counter() - t0 - state.eval_s
            train_s = ranks.from_master({"train_s": train_s}, ("train_s",))["train_s"] if cfg.max_time else train_s
            position = schedule_position(state.iter_num, train_s, cfg)
            last_step = position >= cfg.max_iters
            bar.update((min(int(train_s), bar.total) if cfg.max_time else state.iter_num) - bar.n)
            # evaluate, log and checkpoint when due (a resumed run's last evaluation is logged, unless a stop cut it)
            if state.eval_cut or (eval_due(state.iter_num, loss_value, cfg) or last_step) and \
                    state.iter_num != resumed_at:
                devices.synchronize(device)  # the steps queued on a GPU end first: elapsed_s counts them, eval_s not
                eval_started = time.perf_counter()
                state.elapsed_s = elapsed_before + eval_started - t0
                evaluation = estimate_loss(eval_model, splits, cfg, autocast, stop) if ranks.master else None
                losses = ranks.from_master(evaluation, ("val_loss", "train_loss"))  # so that all decide alike
                if losses is None:  # a stop cut it short: ckpt.pt keeps the steps taken, a resumed run evaluates first
                    state.eval_cut, status = True, "interrupted"
                    break
                check_finite(losses, state, lr, out_dir)
                improved = state.record_eval(losses["val_loss"])
                if 0 < cfg.early_stop_patience <= state.evals_since_best and not last_step:
                    status = "early_stopped"
                if losses["val_loss"] <= cfg.target_loss:
                    status = "target_reached"
                ending = last_step or status != "finished"  # the evaluations near target_loss save only at the end
                keep = state.iter_num > 0 and (ending or state.iter_num % cfg.eval_interval == 0)
                if ranks.master:
                    text = evaluation_sample(eval_model, model_vocab, cfg.eval_sample_chars, cfg.seed, state.iter_num,
                                             cfg.eval_interval, ending)  # at evaluations 0, 1, 2, 4, 8.. and the last
                    runlog.log_evaluation(out_dir, state, evaluation, lr, improved, track, text, model_vocab)
                    if keep and improved:
                        save(out_dir / "best.pt", about, state, eval_model)
                    if keep and (improved or cfg.always_save_checkpoint):
                        save(out_dir / "ckpt.pt", about, state, eval_model, model, optimizer, scaler, batch_gen)
                state.eval_s += time.perf_counter() - eval_started
            if last_step:
                break
            # stop early, or when asked to (under torchrun all agree: a round trip, on GPUs once per log_interval)
            if status == "finished" and ranks.any(stop.requested, check_now=state.iter_num % cfg.log_interval == 0):
                status = "interrupted"
            if status != "finished":
                break

            # set the learning rate (each parameter group scales it: Muon's matrices have their own peak), and step
            lr = get_lr(position, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            loss = train_step(step_model, optimizer, scaler, autocast, train_data, batch_gen, cfg, micro_steps)
            if ema_model is not None:
                update_ema(ema_model, model, cfg.ema, state.iter_num)
            state.iter_num += 1
            state.tokens_seen += cfg.tokens_per_iter

            # log: reading the loss waits for the GPU, so only every log_interval steps
            if state.iter_num % cfg.log_interval == 0 or state.iter_num == cfg.max_iters:
                loss_value = ranks.mean(loss.item())  # a NaN on any process reaches all, so that all stop
                check_finite({"training_loss": loss_value}, state, lr, out_dir)
                bar.set_postfix(iter=state.iter_num, loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", refresh=False)

        # --------------------------------------------------------------------------------------------------- ending
        bar.close()
        state.elapsed_s = elapsed_before + time.perf_counter() - t0
        if status in ("interrupted", "early_stopped") and ranks.master:  # ckpt.pt: the last step, to go on from
            save(out_dir / "ckpt.pt", about, state, eval_model, model, optimizer, scaler, batch_gen)
        if status == "interrupted":
            if ranks.master:
                print(f"stopped at iter {state.iter_num}{' before its evaluation' * state.eval_cut}; saved "
                      f"{out_dir / 'ckpt.pt'}. Resume with: {runlog.resume_command(argv, ranks.ddp)}")
            ranks.barrier()  # torchrun ends every process once one exits with an error: none may before rank 0 saved
            raise SystemExit(130)
        if not ranks.master:
            return None
        evaluation = evaluation or estimate_loss(eval_model, splits, cfg, autocast)  # None: resumed at the very end
        tokens_per_s = (state.tokens_seen - tokens_before) / max(time.perf_counter() - t0, 1e-9)
        return runlog.finish(out_dir, status, classification_metrics(evaluation["val_counts"]), model.num_params(),
                             cfg.max_iters, cfg.max_time, state, tokens_per_s)


if __name__ == "__main__":
    main()
