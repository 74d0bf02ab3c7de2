"""Benchmarks: how fast a config trains, how soon it reaches a val loss, and how fast sampling is.

    python bench.py config/baseline.py                        # ms/iter, tokens/s, MFU, peak memory, compile time
    python bench.py config/baseline.py --compare              # the same config with the fast path off, side by side
    python bench.py config/cpu.py config/nanogpt_cpu.py --target_loss=1.89 --repeats=3
    python bench.py config/baseline.py --sample --device=cpu  # 500 characters with and without the KV cache

Every other --key=value is a train.py setting applied to every config given (python train.py --help lists them).

Step timing builds the config's model and optimizer in this process and times `iters` training steps after
`warmup` untimed ones, `repeats` times; the table shows the median. The first step of a compiled model includes
torch.compile's work: "compile s" is that step's time minus a normal step's. With --compare, each config is also
measured with the fast path off (eager, float32, unfused AdamW, no TF32), interleaved with the fast one, so the
speed-up is a ratio of two medians taken in the same process.

With --target_loss, each config trains for real (`python train.py CONFIG ...` in a subprocess, into a scratch
out_dir) and the time to target is the process's wall time, from launch, up to the end of the first evaluation whose
val loss is at or below the target: startup and every evaluation before it included. The runs of all configs are
interleaved (A, B, A, B, ...) so a slower or faster spell of the machine falls on all of them alike.

MFU (model FLOPs utilization) counts 6 FLOPs per parameter per token plus 12 * n_layer * n_embd * block_size for
attention (forward and backward), and divides by the device's peak: 989e12 for an H100 or H200 and 312e12 for an
A100 (dense bf16), or --peak_flops. Peak memory is torch's peak allocation on a GPU, and this process's peak resident
memory on a CPU (which only grows, so on a CPU it is an upper bound for every row after the first).
"""

import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from configurator import REPO_ROOT, UsageError, build_config, parse_overrides, run_command, suggest
from model import GPT
from train import (TrainConfig, device_name, get_batch, l1_norm, load_meta, load_split, make_optimizer,
                   mixed_precision, model_config_from, optimizer_step, resolve_device, resolve_dtype, validate,
                   weight_matrices)

# Dense bf16 tensor-core peaks, from the vendors' datasheets (SXM parts; H200 has H100's compute).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


@dataclass
class BenchOptions:
    iters: int = 20  # timed training steps per measurement, after the warm-up
    warmup: int = 3  # untimed steps before timing (a compiled model compiles in the first)
    repeats: int = 3  # measurements per row; the table shows their median
    target_loss: float = 0.0  # > 0: train each config for real and time how long until its val loss reaches this
    compare: bool = False  # also measure each config with the fast path off (eager, float32, unfused AdamW)
    sample: bool = False  # time generation with and without the KV cache instead of training
    sample_tokens: int = 500  # characters generated per sampling measurement
    num_samples: int = 1  # samples generated together in --sample (sample.py's default is 3)
    peak_flops: float = 0.0  # the device's peak FLOP/s for MFU; 0 = the bf16 peak of a known GPU, else no MFU
    output: str = ""  # also append the table, with date, device and command, to this markdown file


# ----------------------------------------------------------------------------------------------------------------------
# The command line

def parse_command(argv: list[str]) -> tuple[BenchOptions, list[tuple[str, TrainConfig]]]:
    """(bench options, [(config path, its TrainConfig)]): --key=value goes to bench if it is a bench option, else to
    every config. Every problem is reported at once."""
    config_paths = [a for a in argv if not a.startswith("--")]
    overrides = parse_overrides([a for a in argv if a.startswith("--")])
    bench_keys = {f.name for f in fields(BenchOptions)}
    train_keys = {f.name for f in fields(TrainConfig)}
    problems = [f"unknown key '{key}' on the command line{suggest(key, bench_keys | train_keys)}"
                for key in overrides if key not in bench_keys | train_keys]
    if not config_paths:
        problems.append("give at least one config file, e.g. python bench.py config/cpu.py")
    if problems:
        raise UsageError(problems)
    options = build_config(BenchOptions, None, {k: v for k, v in overrides.items() if k in bench_keys})
    train_overrides = {k: v for k, v in overrides.items() if k in train_keys}
    configs = []
    for path in config_paths:
        try:
            cfg = build_config(TrainConfig, path, train_overrides)
            validate(cfg)
            configs.append((path, cfg))
        except UsageError as e:
            problems += e.problems
    for key in ("iters", "repeats", "sample_tokens", "num_samples"):
        if getattr(options, key) <= 0:
            problems.append(f"'{key}' must be a positive integer, got {getattr(options, key)}")
    if options.warmup < 0:
        problems.append(f"'warmup' must be >= 0, got {options.warmup}")
    if options.compare and (options.target_loss or options.sample):
        problems.append("--compare times training steps: leave out --target_loss and --sample")
    if options.target_loss and options.sample:
        problems.append("--target_loss and --sample are two different benchmarks: run them one at a time")
    if problems:
        raise UsageError(problems)
    return options, configs


# ----------------------------------------------------------------------------------------------------------------------
# Measuring

def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def flops_per_token(n_params: int, n_layer: int, n_embd: int, block_size: int) -> float:
    """Training FLOPs per token: 6 per parameter (forward and backward) plus attention over the context."""
    return 6 * n_params + 12 * n_layer * n_embd * block_size


def peak_flops_of(device: str, given: float) -> tuple[float | None, str]:
    """(peak FLOP/s or None, where it came from)."""
    if given > 0:
        return given, "--peak_flops"
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        for gpu, peak in PEAK_FLOPS.items():
            if gpu in name:
                return peak, f"{gpu} dense bf16"
    return None, "unknown peak: pass --peak_flops for MFU"


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def build_trainer(cfg: TrainConfig, vocab_size: int, device: str, fast: bool):
    """The model, optimizer, grad scaler and autocast a train.py run of cfg would use; with fast=False the fast path
    is off: eager, float32, unfused AdamW."""
    dtype = resolve_dtype(cfg.dtype, device) if fast else "float32"
    use_compile = (device.startswith("cuda") if cfg.compile == "auto" else cfg.compile) and fast
    device_type = "cuda" if device.startswith("cuda") else device
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = fast
        torch.backends.cudnn.allow_tf32 = fast
    torch.manual_seed(cfg.seed)
    raw_model = GPT(model_config_from(cfg, vocab_size)).to(device)
    optimizer = make_optimizer(raw_model, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                               fused=fast and device_type in ("cuda", "cpu"), kind=cfg.optimizer,
                               momentum=cfg.momentum, nesterov=cfg.nesterov, muon_learning_rate=cfg.muon_learning_rate)
    autocast, scaler = mixed_precision(device_type, dtype)
    model = torch.compile(raw_model, mode=cfg.compile_mode) if use_compile else raw_model
    setup = {"dtype": dtype, "compile": cfg.compile_mode if use_compile else None}
    return raw_model, model, optimizer, scaler, autocast, setup


def training_step(model, raw_model, optimizer, scaler, autocast, cfg: TrainConfig, train_data, generator) -> None:
    """One optimizer step as train.py takes it, without the learning-rate schedule (it costs nothing) and the weight
    average of ema (one multiply-add per weight)."""
    if cfg.compile_mode != "default":  # as in train.py: the last step's outputs may be overwritten by CUDA graphs
        torch.compiler.cudagraph_mark_step_begin()
    for _ in range(cfg.gradient_accumulation_steps):
        x, y = get_batch(train_data, cfg.block_size, cfg.batch_size, generator)
        with autocast:
            _, loss = model(x, y, label_smoothing=cfg.label_smoothing)
        if cfg.l1 > 0:
            loss = loss + cfg.l1 * l1_norm(weight_matrices(raw_model))
        scaler.scale(loss / cfg.gradient_accumulation_steps).backward()
    optimizer_step(optimizer, scaler, raw_model.parameters(), cfg.grad_clip)


def time_steps(cfg: TrainConfig, options: BenchOptions, train_data, vocab_size: int, device: str,
               fast_path: list[bool]) -> dict[bool, dict]:
    """Per fast setting: step times of every repeat (ms), compile time and peak memory. The settings' repeats are
    interleaved so that both see the same machine."""
    setups = {}
    for fast in fast_path:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        raw_model, model, optimizer, scaler, autocast, setup = build_trainer(cfg, vocab_size, device, fast)
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        step = (model, raw_model, optimizer, scaler, autocast, cfg, train_data, generator)
        first_started = time.perf_counter()
        training_step(*step)
        synchronize(device)
        first_s = time.perf_counter() - first_started
        for _ in range(max(options.warmup - 1, 0)):
            training_step(*step)
        synchronize(device)
        setups[fast] = {"step": step, "first_s": first_s, "ms": [], **setup, "params": raw_model.num_params()}
    for _ in range(options.repeats):
        for fast in fast_path:
            started = time.perf_counter()
            for _ in range(options.iters):
                training_step(*setups[fast]["step"])
            synchronize(device)
            setups[fast]["ms"].append((time.perf_counter() - started) / options.iters * 1000)
    for fast in fast_path:
        result = setups[fast]
        result["ms_median"] = statistics.median(result["ms"])
        result["compile_s"] = result["first_s"] - result["ms_median"] / 1000 if result["compile"] else None
        result["memory_mb"] = peak_memory_mb(device)
        del result["step"]
    return setups


def time_to_target(path: str, cfg: TrainConfig, overrides: list[str], target: float, out_dir: Path) -> dict:
    """Run train.py on one config into out_dir; its wall time from launch to the first evaluation at or below the
    target val loss (None if never reached), its whole wall time and its best val loss."""
    command = [sys.executable, str(REPO_ROOT / "train.py"), path, *overrides, f"--out_dir={out_dir}"]
    launched = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    process_s = time.perf_counter() - launched
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise UsageError(f"training {path} failed (exit status {proc.returncode}): {last[0]}")
    metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out_dir / "summary.json").read_text())
    reached = next((m for m in metrics if m["val_loss"] <= target), None)
    # elapsed_s counts from the training loop's start; what the process spent before it, and after its last
    # evaluation, is the rest of its wall time.
    after_target = summary["wall_time_s"] - reached["elapsed_s"] if reached else None
    return {"process_s": process_s, "target_s": process_s - after_target if reached else None,
            "target_iter": reached["iter"] if reached else None, "best_val_loss": summary["best_val_loss"],
            "iters": summary["iters"]}


def time_sampling(cfg: TrainConfig, options: BenchOptions, vocab_size: int, device: str) -> dict[bool, list[float]]:
    """Seconds to generate num_samples x sample_tokens characters from a one-character prompt, with and without the
    KV cache, each repeat interleaved. The weights are the config's random initial ones: the work per token is the
    same as a trained model's."""
    torch.manual_seed(cfg.seed)
    model = GPT(model_config_from(cfg, vocab_size)).to(device).eval()  # eval: no dropout
    prompt = torch.zeros((options.num_samples, 1), dtype=torch.long, device=device)
    seconds = {True: [], False: []}
    with torch.inference_mode():
        model.generate(prompt, 8, use_cache=True)  # warm-up: first-call allocations
        for _ in range(options.repeats):
            for use_cache in (True, False):
                started = time.perf_counter()
                model.generate(prompt, options.sample_tokens, top_k=None, use_cache=use_cache,
                               generator=torch.Generator(device=device).manual_seed(cfg.seed))
                synchronize(device)
                seconds[use_cache].append(time.perf_counter() - started)
    return seconds


# ----------------------------------------------------------------------------------------------------------------------
# Reporting

def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def fmt(value, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def step_rows(path: str, cfg: TrainConfig, results: dict[bool, dict], peak: float | None) -> list[list[str]]:
    rows = []
    tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    for fast in sorted(results, reverse=True):
        r = results[fast]
        tokens_per_s = tokens_per_iter / (r["ms_median"] / 1000)
        mfu = (flops_per_token(r["params"], cfg.n_layer, cfg.n_embd, cfg.block_size) * tokens_per_s / peak
               if peak else None)
        speedup = results[False]["ms_median"] / r["ms_median"] if False in results else None
        rows.append([path, "fast" if fast else "off", r["dtype"], r["compile"] or "no",
                     f"{r['ms_median']:.1f}", f"{min(r['ms']):.1f}-{max(r['ms']):.1f}", f"{tokens_per_s:,.0f}",
                     fmt(mfu, ".1%"), f"{r['memory_mb']:,.0f}", fmt(r["compile_s"], ".1f", "-"),
                     fmt(speedup, ".2f", "-")])
    return rows


def bench(argv: list[str]) -> str:
    options, configs = parse_command(argv)
    bench_keys = {f.name for f in fields(BenchOptions)}
    train_overrides = [a for a in argv if a.startswith("--") and a[2:].partition("=")[0] not in bench_keys]
    first_cfg = configs[0][1]
    device = resolve_device(first_cfg.device)
    meta = load_meta(first_cfg.data_dir)
    vocab_size = len(meta["vocab"])
    command = "python bench.py " + " ".join(argv)
    print(f"{command}\n{device} ({device_name(device)}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")

    if options.target_loss:
        scratch = Path(tempfile.mkdtemp(prefix="bench-"))
        runs = {path: [] for path, _ in configs}
        try:
            for repeat in range(options.repeats):
                for index, (path, cfg) in enumerate(configs):
                    run = time_to_target(path, cfg, train_overrides, options.target_loss,
                                         scratch / f"{index}-{repeat}")
                    runs[path].append(run)
                    print(f"  {path} run {repeat + 1}/{options.repeats}: target "
                          f"{fmt(run['target_s'], '.1f', 'not reached')} s, whole run {run['process_s']:.1f} s, "
                          f"best val loss {run['best_val_loss']:.4f}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        medians = {}
        rows = []
        for path, _ in configs:
            reached = [r["target_s"] for r in runs[path] if r["target_s"] is not None]
            medians[path] = (statistics.median(reached) if len(reached) == len(runs[path]) else None,
                             statistics.median(r["process_s"] for r in runs[path]))
        first_path = configs[0][0]
        for path, _ in configs:
            target_s, process_s = medians[path]
            best = [r["best_val_loss"] for r in runs[path]]
            first_target_s = medians[first_path][0]
            ratio = process_s / first_target_s if first_target_s else None
            rows.append([path, str(runs[path][0]["iters"]), f"{statistics.median(best):.4f}",
                         fmt(target_s, ".1f", "not reached"), str(runs[path][0]["target_iter"] or "-"),
                         f"{process_s:.1f}", fmt(ratio, ".2f", "-")])
        header = ["config", "iters", "best val loss (median)", f"s to val loss <= {options.target_loss}",
                  "at iter", "whole run s", f"whole run / {first_path}'s time to target"]
    elif options.sample:
        rows = []
        for path, cfg in configs:
            seconds = time_sampling(cfg, options, vocab_size, resolve_device(cfg.device))
            cached, full = statistics.median(seconds[True]), statistics.median(seconds[False])
            rows.append([path, f"{cfg.n_layer}x{cfg.n_embd}, block {cfg.block_size}", str(options.num_samples),
                         str(options.sample_tokens), f"{cached:.3f}", f"{full:.3f}", f"{full / cached:.1f}x"])
        header = ["config", "model", "samples", "characters each", "KV cache s", "full window s", "speed-up"]
    else:
        peak, peak_source = peak_flops_of(device, options.peak_flops)
        rows = []
        for path, cfg in configs:
            train_data, _ = load_split(cfg.data_dir, "train", load_meta(cfg.data_dir), resolve_device(cfg.device))
            fast_path = [True, False] if options.compare else [True]
            results = time_steps(cfg, options, train_data, vocab_size, resolve_device(cfg.device), fast_path)
            rows += step_rows(path, cfg, results, peak)
        header = ["config", "fast path", "dtype", "compiled", "ms/iter (median)", "range", "tokens/s",
                  f"MFU ({peak_source})", "peak MB", "compile s", "speed-up vs off"]
    report = table(header, rows)
    print(report)
    if options.output:
        stamp = time.strftime("%Y-%m-%d")
        with open(options.output, "a", encoding="utf-8") as f:
            f.write(f"\n`{command}` on {device_name(device)} ({platform.node() or 'this machine'}), "
                    f"torch {torch.__version__}, {stamp}, medians of {options.repeats}:\n\n{report}\n")
    return report


def main(argv=None):
    return run_command(bench, argv, __doc__, BenchOptions)


if __name__ == "__main__":
    main()
