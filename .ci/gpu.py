"""The GPU check: run on a machine with a CUDA GPU, it checks and measures the GPU path and writes a markdown report.

    .ci/gpu OUT_FOLDER [STEP ...]      # every step, or only those named (tests, compare, target, graphs, ...)

It installs nothing and runs from the repository root. Each step is one command with a time limit; its status, wall
time, figures (the markdown tables bench.py prints) and last lines of output go into OUT_FOLDER/gpu-report.md, which
is written anew after every step, so a check cut short still leaves a report of what it did. A step that fails is
recorded and the next one still runs. All the steps together fit in BUDGET_S; a step that no longer fits is marked
not run, and can be run on its own later (`.ci/gpu OUT_FOLDER record`). Each step's whole output is in
OUT_FOLDER/logs/STEP.log.
"""

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPEEDRUN_CANDIDATES = ["config/speedrun.py", "config/speedrun_adamw.py", "config/speedrun_bigbatch.py",
                       "config/speedrun_adamw_bigbatch.py"]
# torch.compile's caches (inductor's compiled kernels and graphs) for every step: a step that finds them filled from an
# earlier step or call compiles in seconds, and the report says which steps did (warm) and which did not (cold).
COMPILE_CACHE = REPO / "out" / "gpu-check" / "compile-cache"
BUDGET_S = 570  # the device tool allows 10 minutes a command; leave room for starting and writing the report

# (name, what it checks or measures, command, time limit in s)
STEPS = [
    ("prepare", "Tiny Shakespeare, prepared from the copy in the repository",
     "python prepare_shakespeare.py", 60),
    ("tests", "the GPU tests: bf16 and fp16 steps, compiled against eager, CUDA graphs with resume, a GPU checkpoint "
     "sampled on the CPU, torchrun on NCCL", "python -m pytest -q tests/test_gpu.py", 240),
    ("compare", "ms/iter, tokens/s, MFU, peak memory and compile time, fast path against off",
     "python bench.py config/baseline.py --compare", 150),
    ("target", "config/baseline.py timed from launch to val loss 1.4697",
     "python bench.py config/baseline.py --target_loss=1.4697 --repeats=1", 180),
    ("graphs", "the same with CUDA graphs (compile_mode=reduce-overhead)",
     "python bench.py config/baseline.py --target_loss=1.4697 --repeats=1 --compile_mode=reduce-overhead", 180),
    ("sample", "sampling speed, each cache mode, 500 characters",
     "python bench.py config/baseline.py --sample --repeats=3", 60),
    ("explain", "explain.py on the GPU for a model of config/baseline.py's size (100 steps trained first), timed: "
     "its goal is under a minute; the sample step's exact-cache ms per character times 200 is what train.py's "
     "eval_sample_chars costs each evaluation",
     "python train.py config/baseline.py --max_iters=100 --out_dir=out/gpu-check/explain --overwrite=True && "
     "python -c \"import subprocess, sys, time; t = time.perf_counter(); subprocess.run([sys.executable, "
     "'explain.py', '--out_dir=out/gpu-check/explain'], check=True); "
     "print(f'explain.py: {time.perf_counter() - t:.1f} s wall')\"", 120),
    ("muon", "AdamW's step (baseline.py) against Muon's (record.py): ms/iter, tokens/s, MFU",
     "python bench.py config/baseline.py config/record.py", 120),
    ("record", "one seed of config/record.py (nanoGPT's compute: 5,000 x 16,384 tokens)",
     "python train.py config/record.py --seed=1 --out_dir=out/gpu-check/record --overwrite=True", 240),
    ("speedrun", "the race to val loss 1.4697: config/speedrun.py and its three runners-up, one run each, from launch",
     f"python bench.py {' '.join(SPEEDRUN_CANDIDATES)} --target_loss=1.4697 --repeats=1", 480),
    ("seeds", "3 seeds of the speedrun's winner (the fastest from launch in the speedrun step's log), then 3 of "
     "config/record.py at full length (tune.py: run again, it resumes)",
     "python bench.py {winner} --target_loss=1.4697 --seeds=1,2,3 && "
     "python tune.py config/record.py seed=1,2,3 --name=gpu-record", 560),
]


def cuda_device() -> str | None:
    """The name of the first CUDA GPU as torch sees it, or None."""
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def run_step(command: str, limit_s: float, log: Path) -> tuple[str, float, str]:
    """Run command in the repository root; (status, wall seconds, its output)."""
    started = time.perf_counter()
    # TORCH_LOGS=recompiles: every recompilation in a step's log, with the guard that failed (a stall's likely cause).
    env = os.environ | {"PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", "TORCHINDUCTOR_CACHE_DIR": str(COMPILE_CACHE),
                        "TORCH_LOGS": "recompiles"}
    try:
        if command.startswith("python "):  # this Python, whatever `python` means on the machine's PATH
            command = sys.executable + command[len("python"):]
        proc = subprocess.run(command, shell=True, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace", timeout=limit_s)
        output = proc.stdout
        status = "passed" if proc.returncode == 0 else f"FAILED (exit status {proc.returncode})"
    except subprocess.TimeoutExpired as e:
        output = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        status = f"FAILED (timed out after {limit_s:.0f} s)"
    log.write_text(output, encoding="utf-8")
    return status, time.perf_counter() - started, output


def cache_state() -> str:
    """Whether the compile cache holds anything yet: what a step's compile times are to be read with."""
    files = [p for p in COMPILE_CACHE.rglob("*") if p.is_file()] if COMPILE_CACHE.is_dir() else []
    if not files:
        return "cold (empty)"
    return f"warm ({len(files)} files, {sum(p.stat().st_size for p in files) / 2**20:.0f} MB)"


def speedrun_winner(out: Path) -> str:
    """The candidate of the speedrun step's table (in its log) that reached the target soonest from launch; the first
    candidate where there is no such log or none reached it."""
    log = out / "logs" / "speedrun.log"
    lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.startswith("|")] \
        if log.is_file() else []
    if not lines:
        return SPEEDRUN_CANDIDATES[0]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    column = next(i for i, name in enumerate(header) if name.startswith("s from launch"))
    times = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        try:
            times[cells[0]] = float(cells[column])
        except (ValueError, IndexError):
            continue  # not reached
    return min(times, key=times.get) if times else SPEEDRUN_CANDIDATES[0]


def figures_and_tail(output: str, tail_lines: int = 25) -> tuple[list[str], list[str]]:
    """The markdown table lines of a step's output (bench.py's figures), and its last lines."""
    lines = output.rstrip().splitlines()
    return [line for line in lines if line.startswith("|")], lines[-tail_lines:]


def report(about: list[str], results: list[dict]) -> str:
    parts = ["# GPU check", "", *about, "", "| step | status | seconds | command |", "| --- | --- | --- | --- |"]
    parts += [f"| {r['name']} | {r['status']} | {r['seconds']} | `{r['command']}` |" for r in results]
    for r in results:
        parts += ["", f"## {r['name']}: {r['status']}", "", r["what"], "", f"`{r['command']}`"]
        if r["figures"]:
            parts += ["", *r["figures"]]
        if r["tail"]:
            parts += ["", "Last lines of output:", "", "```", *r["tail"], "```"]
    return "\n".join(parts) + "\n"


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run_steps(steps, out: Path, about: list[str], budget_s: float) -> list[dict]:
    """Run each step in turn within budget_s in all, writing the report after each; return the results."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    deadline, results = time.perf_counter() + budget_s, []
    for name, what, command, limit_s in steps:
        left = deadline - time.perf_counter()
        result = {"name": name, "what": what, "command": command, "figures": [], "tail": [], "seconds": "-"}
        if left < min(limit_s, 30):
            result["status"] = f"not run: {left:.0f} s of the {budget_s:.0f} s budget left (run it on its own)"
        else:
            command = result["command"] = command.replace("{winner}", speedrun_winner(out))
            cache = cache_state()
            status, seconds, output = run_step(command, min(limit_s, left), out / "logs" / f"{name}.log")
            figures, tail = figures_and_tail(output)
            result |= {"status": status, "seconds": f"{seconds:.1f}", "figures": figures, "tail": tail,
                       "what": f"{what} (compile cache at the start: {cache})"}
            print(f"{name}: {status} in {seconds:.1f} s", flush=True)
        results.append(result)
        write(out / "gpu-report.md", report(about, results))
    return results


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print("usage: .ci/gpu OUT_FOLDER [STEP ...]; steps: " + ", ".join(s[0] for s in STEPS), file=sys.stderr)
        return 2
    name = cuda_device()
    if name is None:
        print("error: no CUDA GPU on this machine: .ci/gpu checks the GPU path and needs one", file=sys.stderr)
        return 1
    out, wanted = Path(argv[0]), argv[1:]
    unknown = [step for step in wanted if step not in [s[0] for s in STEPS]]
    if unknown:
        print(f"error: unknown step {', '.join(unknown)}: choose from {', '.join(s[0] for s in STEPS)}",
              file=sys.stderr)
        return 2
    import torch
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    about = [f"- device: {name}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB, "
             f"compute capability {'.'.join(map(str, torch.cuda.get_device_capability(0)))}",
             f"- torch {torch.__version__} (CUDA {torch.version.cuda}), Python {platform.python_version()}, "
             f"commit {commit.strip() or 'unknown'}",
             f"- {time.strftime('%Y-%m-%d %H:%M %Z')}, `.ci/gpu {' '.join(argv)}`"]
    steps = [s for s in STEPS if not wanted or s[0] in wanted or s[0] == "prepare"]
    results = run_steps(steps, out, about, BUDGET_S)
    record = REPO / "out" / "gpu-check" / "record"
    ran_record = any(r["name"] == "record" and r["seconds"] != "-" for r in results)
    for kept in ("metrics.jsonl", "summary.json", "config.json", "run.json"):  # not its checkpoints: too large
        if ran_record and (record / kept).is_file():
            (out / "record").mkdir(exist_ok=True)
            shutil.copy(record / kept, out / "record" / kept)
    leaderboard = REPO / "out" / "tune-gpu-record" / "leaderboard.md"  # the seeds step's record.py runs
    if any(r["name"] == "seeds" and r["seconds"] != "-" for r in results) and leaderboard.is_file():
        shutil.copy(leaderboard, out / "record-seeds.md")
    print(f"wrote {out / 'gpu-report.md'}")
    return 0 if all(r["status"] == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
