"""Benchmarks: how fast a config trains, how soon it reaches a val loss, and how fast sampling is.

    python bench.py config/baseline.py                        # ms/iter, tokens/s, MFU, peak memory, compile time
    python bench.py config/baseline.py --compare              # the same config with the fast path off, side by side
    python bench.py config/cpu.py config/nanogpt_cpu.py --target_loss=1.89 --repeats=3
    python bench.py config/speedrun.py --target_loss=1.4697 --seeds=1,2,3   # a GPU race, the mean over 3 seeds
    python bench.py config/baseline.py --sample --device=cpu  # 500 characters with each cache mode
    python bench.py config/cpu.py config/cpu_2min.py --profile # where a step's time goes, and a run's start-up

Every other --key=value is a train.py setting applied to every config given (python train.py --help lists them).

Step timing builds the config's model and optimizer in this process with train.py's own build(), and times `iters`
of train.py's own train_step() after `warmup` untimed ones, `repeats` times; the table shows the median. The first
step of a compiled model includes torch.compile's work: "compile s" is that step's time minus a normal step's. With
--compare, each config is also measured with the fast path off (eager, float32, unfused AdamW, no TF32), interleaved
with the fast one, so the speed-up is a ratio of two medians taken in the same process.

With --target_loss, each config trains for real (`python train.py CONFIG ... --target_loss=X` in a subprocess, into
a scratch out_dir), and the run ends at the first evaluation whose val loss is at or below X (train.py's
target_loss; a config's target_eval_interval then evaluates often near it). "s from launch" is that process's wall
time: start-up, compiling, every evaluation and the checkpoints saved at the end included. "s of training" leaves out
the evaluations and checkpoints (the run's elapsed_s less its eval_s), "step ms" is a step's time between the first
and the last evaluation after step 0, and "compile s" what the steps before the first of those took beyond it.
--seeds=1,2,3 runs each config once per seed and shows the mean; else the median of --repeats runs of one seed. The
runs of all configs are interleaved (A, B, A, B, ...) so a slower or faster spell of the machine falls on all alike.

--profile takes train_step apart, over `iters` steps after the warm-up (means, so that the phases add up to the
step): drawing the batches (until the model's forward begins), the forward pass (hooks on the model), the backward
pass (until the last weight's gradient is accumulated), unscaling and clipping, the optimizer's step and the rest
(zero_grad, the grad scaler). "in PyTorch's operators" is the share of the same steps, run again under
torch.profiler, spent inside ATen operators (their self time); the rest is Python and dispatch. "start-up s" is a
one-step run's process time outside its training loop (imports, data, building the model, writing the run's files,
exit), the median of `repeats` runs.

MFU (model FLOPs utilization) counts 6 FLOPs per parameter per token plus 12 * n_layer * n_embd * block_size for
attention (forward and backward), and divides by the GPU's dense peak for the row's arithmetic (bf16 or fp16; TF32
for the fast path's float32, else FP32), looked up by its name in GPU_PEAKS, or by --peak_flops. Peak
memory is torch's peak allocation on a GPU, and this process's peak resident memory on a CPU (which only grows, so
on a CPU it is an upper bound for every row after the first). "data load s" is the time load_data takes to check
and map the data; "s per evaluation" is the median time of train.py's estimate_loss(), val and train loss together.
"""

import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from configurator import REPO_ROOT, UsageError, as_args, build_config, parse_args, run_command, split_options
from data import load_data
from devices import device_name, mixed_precision, resolve_compile, resolve_device, resolve_dtype, synchronize
from evaluate import eval_splits
from files import write_atomic
from model import GENERATION_CACHES
from runlog import read_config, read_metrics, read_summary
from tables import fmt, markdown_table
from train import TrainConfig, build, estimate_loss, load_config, train_step


@dataclass
class BenchOptions:
    iters: int = 20  # timed training steps per measurement, after the warm-up
    warmup: int = 3  # untimed steps before timing (a compiled model compiles in the first)
    repeats: int = 3  # measurements per row; the table shows their median
    target_loss: float = 0.0  # > 0: train each config for real until its val loss reaches this (train.py's key too)
    seeds: str = ""  # with target_loss: comma-separated seeds, one run of each config per seed (instead of repeats)
    compare: bool = False  # also measure each config with the fast path off (eager, float32, unfused AdamW)
    sample: bool = False  # time generation with each cache mode (exact, approximate, none) instead of training
    profile: bool = False  # where a training step's time goes, phase by phase, and a run's start-up
    sample_tokens: int = 500  # characters generated per sampling measurement
    num_samples: int = 1  # samples generated together in --sample (sample.py's default is 3)
    peak_flops: float = 0.0  # the device's peak FLOP/s for MFU; 0 = a known GPU's peak for the dtype, else no MFU
    output: str = ""  # also append the table, with date, device and command, to this markdown file


# ----------------------------------------------------------------------------------------------------------------------
# The command line

def parse_command(argv: list[str]) -> tuple[BenchOptions, list[tuple[str, TrainConfig]], list[str]]:
    """(bench options, [(config path, its TrainConfig)], the train.py options as typed): a --key=value is bench's
    if it is a bench option, else a train.py setting for every config. Every problem is reported at once."""
    config_paths, options = parse_args(argv)
    (bench_raw, train_raw), problems = split_options(options, BenchOptions, TrainConfig)
    train_args = as_args(train_raw)
    if not config_paths:
        problems.append("give at least one config file, e.g. python bench.py config/cpu.py")
    try:
        options = build_config(BenchOptions, None, bench_raw)
    except UsageError as e:
        problems, options = problems + e.problems, BenchOptions()
    configs = []
    for path in config_paths:
        try:
            configs.append((path, load_config([path, *train_args])))
        except UsageError as e:
            problems += e.problems
    for key in ("iters", "repeats", "sample_tokens", "num_samples"):
        if getattr(options, key) <= 0:
            problems.append(f"'{key}' must be a positive integer, got {getattr(options, key)}")
    if options.warmup < 0:
        problems.append(f"'warmup' must be >= 0, got {options.warmup}")
    chosen = [f"--{key}" for key in ("compare", "target_loss", "sample", "profile") if getattr(options, key)]
    if len(chosen) > 1:
        problems.append(f"{' and '.join(chosen)} are different benchmarks: run them one at a time")
    if options.seeds and not options.target_loss:
        problems.append("--seeds gives the seeds of --target_loss's runs: add --target_loss, or leave --seeds out")
    elif options.seeds and not re.fullmatch(r"\d+(,\d+)*", options.seeds):
        problems.append(f"'seeds' must be comma-separated whole numbers (e.g. 1,2,3), got '{options.seeds}'")
    if problems:
        raise UsageError(problems)
    return options, configs, train_args


# ----------------------------------------------------------------------------------------------------------------------
# Measuring

def flops_per_token(n_params: int, n_layer: int, n_embd: int, block_size: int) -> float:
    """Training FLOPs per token: 6 per parameter (forward and backward) plus attention over the context."""
    return 6 * n_params + 12 * n_layer * n_embd * block_size


# Dense peak FLOP/s (no sparsity) from the vendors' datasheets, for each kind of arithmetic a run can use: bf16 or fp16
# on the tensor cores (autocast), TF32 (float32 matmuls with TF32 allowed: the fast path) and plain FP32. Each row:
# a pattern matched as a whole word in torch.cuda.get_device_name(), the name shown, and the three peaks (None: the
# GPU has no such unit). V100 and T4 have fp16 tensor cores but no bf16 or TF32; the harness picks float16 there.
GPU_PEAKS = [
    (r"H100 PCIe", "H100 PCIe", 756e12, 378e12, 51e12),
    (r"H100 NVL", "H100 NVL", 835e12, 418e12, 60e12),
    (r"H100", "H100 SXM", 989e12, 495e12, 67e12),
    (r"H200 NVL", "H200 NVL", 835e12, 418e12, 60e12),
    (r"H200", "H200 SXM", 989e12, 495e12, 67e12),
    (r"A100", "A100", 312e12, 156e12, 19.5e12),
    (r"L40S", "L40S", 362e12, 183e12, 91.6e12),
    (r"L4", "L4", 121e12, 60e12, 30.3e12),
    (r"RTX 4090", "RTX 4090", 165e12, 82.6e12, 82.6e12),
    (r"A10", "A10", 125e12, 62.5e12, 31.2e12),
    (r"V100", "V100 SXM2", 125e12, None, 15.7e12),
    (r"T4", "T4", 65e12, None, 8.1e12),
]


def gpu_peak_flops(name: str, dtype: str, tf32: bool) -> tuple[float, str] | None:
    """(peak FLOP/s, its description) of the GPU called name for work in dtype, or None for a GPU not in GPU_PEAKS.
    float32 counts at the TF32 peak when TF32 is allowed (devices.mixed_precision's fast path), else at the FP32 one."""
    for pattern, label, half, tf32_peak, fp32_peak in GPU_PEAKS:
        if re.search(rf"(?<![\w]){pattern}(?![\w])", name):
            if dtype in ("bfloat16", "float16"):
                return half, f"{label} dense {dtype} {half / 1e12:g} TFLOP/s"
            if tf32 and tf32_peak is not None:
                return tf32_peak, f"{label} dense TF32 {tf32_peak / 1e12:g} TFLOP/s"
            return fp32_peak, f"{label} FP32 {fp32_peak / 1e12:g} TFLOP/s"
    return None


def peak_of(device: str, dtype: str, fast: bool, given: float) -> tuple[float | None, str]:
    """(peak FLOP/s or None, what it is): --peak_flops if given, else the GPU's own peak for dtype (GPU_PEAKS;
    float32 counts at the TF32 peak on the fast path, which allows TF32)."""
    if given > 0:
        return given, "--peak_flops"
    found = gpu_peak_flops(device_name(device), dtype, tf32=fast) if device.startswith("cuda") else None
    return found or (None, "no known peak: pass --peak_flops")


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def build_trainer(cfg: TrainConfig, vocab_size: int, device: str, fast: bool):
    """The model, optimizer, grad scaler and autocast that train.py builds for cfg, through the same functions; with
    fast=False the fast path is off: eager, float32, unfused AdamW, no TF32."""
    dtype = resolve_dtype(cfg.dtype, device) if fast else "float32"
    compiled = resolve_compile(cfg.compile, device) and fast
    torch.manual_seed(cfg.seed)
    model, optimizer = build(cfg, vocab_size, device, fused=fast)
    autocast, scaler = mixed_precision(device, dtype, fast)
    if compiled:
        model.compile(mode=cfg.compile_mode)  # in place, as train.py does
    setup = {"dtype": dtype, "compile": cfg.compile_mode if compiled else None, "params": model.num_params()}
    return (model, optimizer, scaler, autocast), setup


def time_steps(cfg: TrainConfig, options: BenchOptions, train_data, vocab_size: int, device: str,
               fast_path: list[bool]) -> dict[bool, dict]:
    """Per fast setting: step times of every repeat (ms), compile time and peak memory. The settings' repeats are
    interleaved so that both see the same machine. Each step is train.py's train_step; the learning-rate schedule
    (one multiply per parameter group) and ema's average (one multiply-add per weight) are left out."""
    mine = range(cfg.gradient_accumulation_steps)  # all the micro-batches: one process
    setups = {}
    for fast in fast_path:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        parts, setup = build_trainer(cfg, vocab_size, device, fast)
        step = (*parts, train_data, torch.Generator(device=train_data.device).manual_seed(cfg.seed), cfg, mine)
        first_started = time.perf_counter()
        train_step(*step)
        synchronize(device)
        first_s = time.perf_counter() - first_started
        for _ in range(max(options.warmup - 1, 0)):
            train_step(*step)
        synchronize(device)
        setups[fast] = {"step": step, "first_s": first_s, "ms": [], **setup}
    for _ in range(options.repeats):
        for fast in fast_path:
            started = time.perf_counter()
            for _ in range(options.iters):
                train_step(*setups[fast]["step"])
            synchronize(device)
            setups[fast]["ms"].append((time.perf_counter() - started) / options.iters * 1000)
    for fast in fast_path:
        result = setups[fast]
        result["ms_median"] = statistics.median(result["ms"])
        result["compile_s"] = result["first_s"] - result["ms_median"] / 1000 if result["compile"] else None
        result["memory_mb"] = peak_memory_mb(device)
        del result["step"]
    return setups


PHASES = ("batch", "forward", "backward", "clip", "optimizer", "rest")


def time_phases(cfg: TrainConfig, options: BenchOptions, train_data, vocab_size: int, device: str) -> dict:
    """{phase: mean ms} of train.py's train_step (PHASES; the module docstring says where each ends), with "step"
    and "in_ops" (the share of the steps inside ATen operators, by torch.profiler)."""
    (model, optimizer, scaler, autocast), _ = build_trainer(cfg, vocab_size, device, fast=True)
    batch_gen = torch.Generator(device=train_data.device).manual_seed(cfg.seed)
    step = (model, optimizer, scaler, autocast, train_data, batch_gen, cfg, range(cfg.gradient_accumulation_steps))
    marks = []  # (what, time) in the step being timed

    def mark(what):
        synchronize(device)
        marks.append((what, time.perf_counter()))

    def timed(method, before, after):
        def call(*args, **kwargs):
            mark(before)
            result = method(*args, **kwargs)
            mark(after)
            return result
        return call

    model.register_forward_pre_hook(lambda *_: mark("forward"))
    model.register_forward_hook(lambda *_: mark("forward_end"))
    for p in model.parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda _: mark("gradient"))
    optimizer.step = timed(optimizer.step, "optimizer", "optimizer_end")
    for _ in range(options.warmup):
        train_step(*step)
    phases = {name: [] for name in ("step", *PHASES)}
    for _ in range(options.iters):
        marks.clear()
        mark("start")
        train_step(*step)
        mark("end")
        at = {}
        for what, t in marks:
            at.setdefault(what, t)  # each phase's first mark
        forward = sum(t - start for (what, start), (_, t) in zip(marks, marks[1:]) if what == "forward")
        last_gradient = max(t for what, t in marks if what == "gradient")
        seconds = (at["end"] - at["start"], at["forward"] - at["start"], forward,
                   last_gradient - at["forward"] - forward, at["optimizer"] - last_gradient,
                   at["optimizer_end"] - at["optimizer"], at["end"] - at["optimizer_end"])
        for name, s in zip(phases, seconds):
            phases[name].append(s * 1000)
    result = {name: statistics.mean(ms) for name, ms in phases.items()}  # means, which add up as the phases do
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for _ in range(options.iters):
            train_step(*step)
        synchronize(device)
        wall_us = (time.perf_counter() - started) * 1e6
    result["in_ops"] = sum(event.self_cpu_time_total for event in prof.key_averages()) / wall_us
    return result


def bench_profile(configs, options: BenchOptions, train_args: list[str]) -> tuple[list[str], list[list]]:
    rows, scratch = [], Path(tempfile.mkdtemp(prefix="bench-"))
    one_step = [*train_args, "--max_iters=1", "--eval_interval=1", "--eval_at_start=false", "--eval_tokens=1024",
                "--eval_iters=1", "--eval_sample_chars=0"]  # the loop is as short as it can be: the rest is start-up
    try:
        for index, (path, cfg) in enumerate(configs):
            vocab, train_data, _, _ = load_data(cfg.data_dir, resolve_device(cfg.device), cfg.block_size)
            ms = time_phases(cfg, options, train_data, len(vocab), resolve_device(cfg.device))
            runs = [time_to_target(path, one_step, scratch / f"{index}-{repeat}") for repeat in range(options.repeats)]
            failed = [run["error"] for run in runs if "error" in run]
            start_up = failed[0] if failed else f"{statistics.median(run['outside_s'] for run in runs):.2f}"
            shares = (f"{ms[name]:.1f} ({ms[name] / ms['step']:.0%})" for name in PHASES)
            rows.append([path, f"{ms['step']:.1f}", *shares, f"{ms['in_ops']:.0%}", start_up])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ["config", "step ms", "batch ms", "forward ms", "backward ms", "clip ms", "optimizer ms", "rest ms",
            "in PyTorch's operators", "start-up s"], rows


def time_to_target(path: str, train_args: list[str], out_dir: Path) -> dict:
    """Run train.py on one config into out_dir (train_args hold --target_loss, so the run ends at the first evaluation
    at or below it) and read what the run took from its record: from launch to that evaluation (the process's wall
    time, as the user waits for it: start-up, compiling, evaluations and saving included), of training only
    (elapsed_s less eval_s there), a step (between the first and the last evaluation after step 0, so that the first
    steps' compiling falls outside it), and outside the training loop (start-up and exit). A run that fails gives
    its error and its wall time, so that the other configs' runs still go on."""
    command = [sys.executable, str(REPO_ROOT / "train.py"), path, *train_args, f"--out_dir={out_dir}"]
    launched = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    process_s = time.perf_counter() - launched
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"failed (exit status {proc.returncode}): {last[0]}", "process_s": process_s}
    summary, config = read_summary(out_dir), read_config(out_dir)
    rows = [m for m in read_metrics(out_dir) if m["iter_num"]]
    reached = summary["status"] == "target_reached"
    step_s = compile_s = None
    if len(rows) >= 2 and rows[-1]["iter_num"] > rows[0]["iter_num"]:
        step_s = (rows[-1]["train_s"] - rows[0]["train_s"]) / (rows[-1]["iter_num"] - rows[0]["iter_num"])
        # The first steps' time beyond that of a normal step: compiling, CUDA graph capture, the first allocations.
        compile_s = rows[0]["train_s"] - rows[0]["iter_num"] * step_s if config["compile"] else None
    return {"process_s": process_s, "target_s": process_s if reached else None,
            "train_s": rows[-1]["train_s"] if reached else None,
            "target_iter": summary["iter_num"] if reached else None,
            "best_val_loss": summary["best_val_loss"], "iter_num": summary["iter_num"], "step_s": step_s,
            "compile_s": compile_s, "outside_s": process_s - summary["elapsed_s"], "eval_s": summary.get("eval_s"),
            "params": summary["params"], "dtype": config["dtype"]}


def time_sampling(cfg: TrainConfig, options: BenchOptions, vocab_size: int, device: str) -> dict[str, list[float]]:
    """Seconds to generate num_samples x sample_tokens characters from a one-character prompt, for each of
    GPT.generate's cache modes, each repeat interleaved. The weights are the config's random initial ones: the work
    per token is the same as a trained model's. Refuses to report if exact and none gave different text."""
    torch.manual_seed(cfg.seed)
    model = build(cfg, vocab_size, device)[0].eval()  # eval: no dropout
    prompt = torch.zeros((options.num_samples, 1), dtype=torch.long, device=device)
    seconds, texts = {mode: [] for mode in GENERATION_CACHES}, {}
    with torch.inference_mode():
        model.generate(prompt, 8)  # warm-up: first-call allocations
        for _ in range(options.repeats):
            for mode in GENERATION_CACHES:
                started = time.perf_counter()
                texts[mode] = model.generate(prompt, options.sample_tokens, top_k=None, cache=mode,
                                             generator=torch.Generator(device=device).manual_seed(cfg.seed))
                synchronize(device)
                seconds[mode].append(time.perf_counter() - started)
    if not torch.equal(texts["exact"], texts["none"]):
        raise RuntimeError("generation with cache=exact gave other text than cache=none: a bug in model.generate")
    return seconds


# ----------------------------------------------------------------------------------------------------------------------
# The three benchmarks: each gives a table's header and rows

def time_evaluation(cfg: TrainConfig, options: BenchOptions, train_data, val_data, vocab_size: int,
                    device: str) -> float:
    """Median seconds of train.py's estimate_loss() (val and train loss, each over what eval_tokens allows)."""
    (model, _, _, autocast), _ = build_trainer(cfg, vocab_size, device, fast=True)
    splits = eval_splits(train_data, val_data, cfg.eval_tokens, cfg.eval_iters, cfg.batch_size, cfg.block_size)
    seconds = []
    for _ in range(options.repeats):
        started = time.perf_counter()
        estimate_loss(model, splits, cfg, autocast)
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def bench_steps(configs, options: BenchOptions, device: str) -> tuple[list[str], list[list]]:
    rows, peaks = [], []
    for path, cfg in configs:
        started = time.perf_counter()
        vocab, train_data, val_data, _ = load_data(cfg.data_dir, resolve_device(cfg.device), cfg.block_size)
        load_s = time.perf_counter() - started
        vocab_size = len(vocab)  # each config's own data: a BPE run's vocabulary is not a character run's
        fast_path = [True, False] if options.compare else [True]
        results = time_steps(cfg, options, train_data, vocab_size, resolve_device(cfg.device), fast_path)
        eval_s = time_evaluation(cfg, options, train_data, val_data, vocab_size, resolve_device(cfg.device))
        for fast in fast_path:
            r = results[fast]
            tokens_per_s = cfg.tokens_per_iter / (r["ms_median"] / 1000)
            peak, peak_source = peak_of(device, r["dtype"], fast, options.peak_flops)
            peaks.append(peak_source)
            mfu = (flops_per_token(r["params"], cfg.n_layer, cfg.n_embd, cfg.block_size) * tokens_per_s / peak
                   if peak else None)
            speedup = results[False]["ms_median"] / r["ms_median"] if False in results else None
            rows.append([path, "fast" if fast else "off", r["dtype"], r["compile"] or "no", f"{r['ms_median']:.1f}",
                         f"{min(r['ms']):.1f}-{max(r['ms']):.1f}", f"{tokens_per_s:,.0f}", fmt(mfu, ".1%", "n/a"),
                         f"{r['memory_mb']:,.0f}", fmt(r["compile_s"], ".1f"), fmt(speedup, ".2f"), f"{load_s:.2f}",
                         f"{eval_s:.2f}" if fast else "-"])
    header = ["config", "fast path", "dtype", "compiled", "ms/iter (median)", "range", "tokens/s",
              f"MFU (of {', '.join(dict.fromkeys(peaks))})", "peak MB", "compile s", "speed-up vs off", "data load s",
              "s per evaluation"]
    return header, rows


def bench_target(configs, options: BenchOptions, train_args: list[str], device: str):
    """Each config trained to target_loss, repeats times or once per seed (interleaved: A, B, A, B, ...); a row per
    config, with the mean over seeds (the median over repeats of one seed)."""
    scratch = Path(tempfile.mkdtemp(prefix="bench-"))
    seeds = [int(seed) for seed in options.seeds.split(",")] if options.seeds else [None] * options.repeats
    runs = {path: [] for path, _ in configs}
    try:
        for repeat, seed in enumerate(seeds):
            for index, (path, _) in enumerate(configs):
                args = train_args + ([f"--seed={seed}"] if seed is not None else [])
                run = time_to_target(path, args, scratch / f"{index}-{repeat}")
                runs[path].append(run)
                which = f"  {path} run {repeat + 1}/{len(seeds)}{f' (seed {seed})' if seed is not None else ''}"
                if "error" in run:
                    print(f"{which}: {run['error']}")
                    continue
                target = "not reached" if run["target_s"] is None else f"{run['target_s']:.1f} s"
                print(f"{which}: target {target}, whole run {run['process_s']:.1f} s, "
                      f"best val loss {run['best_val_loss']:.4f}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    average = statistics.mean if options.seeds else statistics.median
    rows, peaks = [], []

    def over_runs(path, key):  # the average of a figure over the config's runs; None if any run lacks it
        values = [r.get(key) for r in runs[path]]
        return average(values) if None not in values else None

    first_target_s = over_runs(configs[0][0], "target_s")
    for path, cfg in configs:
        failed = [r["error"] for r in runs[path] if "error" in r]
        if failed:  # its row says why, and bench.py exits with an error after the table
            rows.append([path, options.seeds or "-", "-", failed[0], *["-"] * 10])
            continue
        step_s, first = over_runs(path, "step_s"), runs[path][0]
        peak, source = peak_of(device, first["dtype"], True, options.peak_flops)
        peaks.append(source)
        flops = flops_per_token(first["params"], cfg.n_layer, cfg.n_embd, cfg.block_size) * cfg.tokens_per_iter
        rows.append([path, options.seeds or "-", first["iter_num"], fmt(over_runs(path, "best_val_loss"), ".4f"),
                     fmt(over_runs(path, "target_s"), ".1f", "not reached"), fmt(over_runs(path, "train_s"), ".1f"),
                     first["target_iter"], fmt(step_s * 1000 if step_s else None, ".1f"),
                     fmt(flops / step_s / peak if step_s and peak else None, ".1%", "n/a"),
                     fmt(over_runs(path, "compile_s"), ".1f"), fmt(over_runs(path, "outside_s"), ".1f"),
                     fmt(over_runs(path, "eval_s"), ".1f"), fmt(over_runs(path, "process_s"), ".1f"),
                     fmt(over_runs(path, "process_s") / first_target_s if first_target_s else None, ".2f")])
    which = "mean" if options.seeds else "median"
    header = ["config", "seeds", "iters", f"best val loss ({which})",
              f"s from launch to val loss <= {options.target_loss}", "s of training", "at iter", "step ms",
              f"MFU (of {', '.join(dict.fromkeys(peaks))})", "compile s", "outside the loop s", "evaluating s",
              "whole run s", f"whole run / {configs[0][0]}'s time to target"]
    return header, rows


def bench_sampling(configs, options: BenchOptions) -> tuple[list[str], list[list]]:
    rows = []
    for path, cfg in configs:
        vocab_size = len(load_data(cfg.data_dir, "cpu", cfg.block_size)[0])
        seconds = time_sampling(cfg, options, vocab_size, resolve_device(cfg.device))
        exact, approximate, full = (statistics.median(seconds[mode]) for mode in ("exact", "approximate", "none"))
        rows.append([path, f"{cfg.n_layer}x{cfg.n_embd}, block {cfg.block_size}", options.num_samples,
                     options.sample_tokens, f"{exact:.3f}", f"{full:.3f}", f"{full / exact:.1f}x",
                     f"{approximate:.3f}", f"{exact / approximate:.1f}x"])
    return ["config", "model", "samples", "characters each", "exact s", "no cache s", "exact's speed-up",
            "approximate s", "exact's cost"], rows


def bench(argv: list[str]) -> str:
    options, configs, train_args = parse_command(argv)
    first_cfg = configs[0][1]
    device = resolve_device(first_cfg.device)
    command = "python bench.py " + " ".join(argv)
    print(f"{command}\n{device} ({device_name(device)}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    if options.target_loss:
        header, rows = bench_target(configs, options, train_args, device)
    elif options.sample:
        header, rows = bench_sampling(configs, options)
    elif options.profile:
        header, rows = bench_profile(configs, options, train_args)
    else:
        header, rows = bench_steps(configs, options, device)
    report = markdown_table(header, rows)
    print(report)
    failed = [row[0] for row in rows if str(row[3]).startswith("failed (")]
    if options.output:
        output = Path(options.output)
        before = output.read_text(encoding="utf-8") if output.is_file() else ""
        write_atomic(output, f"{before}\n`{command}` on {device_name(device)} ({platform.node() or 'this machine'}), "
                             f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, medians of {options.repeats}:"
                             f"\n\n{report}\n")
    if failed:
        raise UsageError(f"training {', '.join(failed)} failed: its row above says why; the other rows stand")
    return report


def main(argv=None):
    return run_command(bench, argv, __doc__, BenchOptions)


if __name__ == "__main__":
    main()
