"""The run record: what a run writes into its out_dir besides checkpoints, and how every script reads it back.

    config.json    the resolved config: every key, with auto resolved to what was used
    run.json       what made the run: command line, git commit, versions, device, processes, parameters, start time
    metrics.jsonl  one JSON line per evaluation (METRICS_KEYS): its numbers, and the text the model wrote then
    summary.json   written when a run ends: its best and final evaluations, overfitting, time and throughput

train.py writes them; plot.py, compare.py, tune.py and bench.py read them here. Runs written before a quantity got its
present name are read with the present names (LEGACY_NAMES). The reports' markdown tables are made in tables.py.
"""

import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import bpe
from configurator import REPO_ROOT, UsageError
from devices import device_name
from evaluate import accuracies, bits_per_character
from files import read_json, write_atomic, write_json
from trackers import TRACKER_DIRS

METRICS_KEYS = ("iter_num", "train_loss", "val_loss", "val_ppl", "val_bpc", "val_acc", "val_top5", "lr", "elapsed_s",
                "eval_s", "train_s", "tokens_seen", "val_loss_tokens", "train_loss_tokens",
                "sample")  # sample: with eval_sample_chars
LEGACY_NAMES = {"iter": "iter_num", "iters": "iter_num", "tokens": "tokens_seen", "wall_time_s": "elapsed_s"}
STATUS_NOTES = {"early_stopped": " | early stopped", "target_reached": " | target_loss reached"}  # in the last line
OVERFIT_MARGIN = 0.01  # nats the val loss may rise after its best before summary.json flags the run as overfitting
NOT_A_RUN = "give the out_dir of a train.py run"


# ----------------------------------------------------------------------------------------------------------------------
# Writing, as a run goes

RUN_FILES = ("config.json", "run.json", "metrics.jsonl", "summary.json", "ckpt.pt", "best.pt")  # a run's own files


def start(out_dir: Path, config: dict, info: dict, resumed_at: int | None, tokens_per_iter: int,
          overwrite: bool = False) -> None:
    """Write config.json and run.json, and print what is being trained where. A resumed run keeps the evaluations it
    logged up to its checkpoint. A new run first moves a previous run's files out of the folder (keep_aside), or with
    overwrite deletes them, so that nothing of an old run passes for the new one's."""
    if resumed_at is None:
        if overwrite:
            replaced = [path for path in (out_dir / name for name in RUN_FILES + TRACKER_DIRS) if path.exists()]
            for path in replaced:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            if replaced:
                print(f"deleted the previous run's files in {out_dir} (--overwrite=True)")
        else:
            kept = keep_aside(out_dir)
            if kept is not None:
                print(f"moved the previous run in {out_dir} to {kept} (with --overwrite=True a new run replaces it)")
        write_atomic(out_dir / "metrics.jsonl", "")
    else:
        trim_metrics(out_dir / "metrics.jsonl", resumed_at)
    write_json(out_dir / "config.json", config)
    write_json(out_dir / "run.json", info)
    processes = info["world_size"]
    print(f"{info['params'] / 1e6:.2f}M parameters | {info['device']} ({info['device_name']}) | {config['dtype']}"
          f"{' | compiled' if config['compile'] else ''}{f' | {processes} processes' if processes > 1 else ''} | "
          f"{tokens_per_iter:,} tokens per iteration | out_dir {out_dir}")
    source = info.get("started_from")
    if source is not None and resumed_at is None:
        added = source["added_characters"]
        print(f"starting from {source['path']} (iter {source['iter_num']}, val loss {source['best_val_loss']:.4f}); "
              f"{'characters added: ' + ' '.join(repr(c) for c in added) if added else 'no characters added'}")


def keep_aside(out_dir: Path) -> Path | None:
    """Move the files of the run in out_dir (and its trackers' folders), if it has results (an evaluation, a
    checkpoint or a summary), into a new folder beside it named after the time that run started,
    <out_dir>-YYYYmmdd-HHMMSS; return that folder. A run that stopped before its first evaluation has no results, and
    its files are left to be replaced."""
    metrics = out_dir / "metrics.jsonl"
    has_results = any((out_dir / name).is_file() for name in ("ckpt.pt", "best.pt", "summary.json")) or \
        (metrics.is_file() and metrics.stat().st_size > 0)
    if not has_results:
        return None
    present = [out_dir / name for name in RUN_FILES + TRACKER_DIRS if (out_dir / name).exists()]
    try:
        started = time.strptime(json.loads((out_dir / "run.json").read_text(encoding="utf-8"))["started"],
                                "%Y-%m-%dT%H:%M:%S%z")
    except (OSError, ValueError, KeyError, TypeError):  # no run.json, or not ours: the oldest file's time
        started = time.localtime(min(path.stat().st_mtime for path in present))
    stamp = time.strftime("%Y%m%d-%H%M%S", started)
    kept, n = out_dir.with_name(f"{out_dir.name}-{stamp}"), 1
    while kept.exists():
        n += 1
        kept = out_dir.with_name(f"{out_dir.name}-{stamp}-{n}")
    kept.mkdir()
    for path in present:
        os.replace(path, kept / path.name)  # one rename each: a crash leaves every file whole, here or there
    return kept


def run_info(argv, device: str, world_size: int, params: int, resumed_at: int | None,
             started_from: dict | None = None) -> dict:
    """run.json's content. started_from: the run a fine-tuning run started from (finetune.model_vocab's note)."""
    return {
        "argv": sys.argv if argv is None else ["train.py", *argv],
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": device,
        "device_name": device_name(device),
        "world_size": world_size,  # processes under torchrun, each on its own device; 1 without
        "params": params,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed_from_iter": resumed_at,
        "started_from": started_from,  # its checkpoint, iteration and best val loss, and the characters added
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty else "")


def log_evaluation(out_dir: Path, state, evaluation: dict, lr: float, improved: bool, trackers=(),
                   sample: str | None = None, vocab: list[str] | None = None) -> dict:
    """Add one line to metrics.jsonl for the evaluation at state.iter_num (a RunState; evaluation: train.py's
    estimate_loss; sample: the text the model wrote then, if any; vocab: the model's, which says how many characters
    each token holds: one, without it), print it, pass it to the trackers, and return it."""
    val_loss, train_loss = evaluation["val_loss"], evaluation["train_loss"]
    val_acc, val_top5 = accuracies(evaluation["val_counts"])
    token_chars = bpe.token_chars(vocab) if vocab is not None else [1] * evaluation["val_counts"].size(1)
    val_bpc = bits_per_character(val_loss, evaluation["val_counts"], token_chars)
    record = {"iter_num": state.iter_num, "train_loss": round(train_loss, 6), "val_loss": round(val_loss, 6),
              "val_ppl": perplexity(val_loss), "val_bpc": round(val_bpc, 6),
              "val_acc": round(val_acc, 6), "val_top5": round(val_top5, 6),
              "lr": lr, "elapsed_s": round(state.elapsed_s, 3), "eval_s": round(state.eval_s, 3),
              "train_s": round(state.elapsed_s - state.eval_s, 3), "tokens_seen": state.tokens_seen,
              "val_loss_tokens": evaluation["val_loss_tokens"], "train_loss_tokens": evaluation["train_loss_tokens"]}
    if sample is not None:
        record["sample"] = sample
    path = out_dir / "metrics.jsonl"
    logged = path.read_text(encoding="utf-8") if path.is_file() else ""
    write_atomic(path, logged + json.dumps(record) + "\n")  # the whole file anew: never a line cut short
    tqdm.write(f"iter {state.iter_num}: train loss {train_loss:.4f}, val loss {val_loss:.4f} ({val_bpc:.3f} bits a "
               f"character), val accuracy {val_acc:.1%}{' (best)' if improved else ''}")
    for tracker in trackers:
        tracker.log(record)
    return record


def progress_bar(name: str, max_iters: int, max_time: float, iter_num: int, train_s: float, show: bool):
    """tqdm's bar over the run: its steps out of max_iters, or with a max_time budget its seconds of training."""
    if max_time:
        seconds = math.ceil(max_time)
        return tqdm(total=seconds, initial=min(int(train_s), seconds), desc=name, dynamic_ncols=True, disable=not show,
                    bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]")
    return tqdm(total=max_iters, initial=iter_num, desc=name, unit="it", dynamic_ncols=True, disable=not show)


def resume_command(argv, torchrun: bool) -> str:
    """The command that resumes the run started by argv (train.py's arguments; None: this process's)."""
    launcher = "torchrun <the same torchrun options> train.py" if torchrun else "python train.py"
    args = [a for a in (sys.argv[1:] if argv is None else argv) if "init_from" not in a]
    return f"{launcher} {' '.join(args)} --init_from=resume"


def perplexity(loss: float) -> float:
    """exp(loss), rounded; infinite where exp overflows (a loss above ~709 nats: a model far from trained)."""
    return round(math.exp(loss), 4) if loss < 700 else float("inf")


def trim_metrics(path: Path, iter_num: int) -> None:
    """Keep the metrics of evaluations up to iter_num, the checkpoint's: a run killed after logging an evaluation
    but before saving it logs that evaluation again when resumed. A line cut short by the kill goes too."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            record = present_names(json.loads(line))
        except (ValueError, AttributeError):
            continue
        if record.get("iter_num", iter_num + 1) <= iter_num:
            kept.append(json.dumps(record) + "\n")
    write_atomic(path, "".join(kept))


def finish(out_dir: Path, status: str, classification: dict, params: int, max_iters: int, max_time: float, state,
           tokens_per_s: float) -> dict:
    """Write summary.json from metrics.jsonl, the last evaluation's per-character metrics and where the run stands
    (state: a RunState), print its line, and return it. A max_time budget spent within the first step is refused."""
    train_s = state.elapsed_s - state.eval_s
    if max_time and state.iter_num <= 1 and train_s >= max_time:  # no schedule ran: not a result
        raise UsageError(f"max_time={max_time:g} s ran out within the first training step ({train_s:.2f} s of "
                         f"training; {out_dir} holds that step): give a budget of many steps, or max_time=0 to train "
                         f"for max_iters steps")
    if status == "early_stopped":
        print(f"early stop: no better val loss in {state.evals_since_best} evaluations (best "
              f"{state.best_val_loss:.4f} at iter {state.best_iter})")
    elapsed_s = state.elapsed_s
    metrics = read_metrics(out_dir)
    best = min(metrics, key=lambda m: m["val_loss"])
    started_from = read_run_info(out_dir).get("started_from")
    final = metrics[-1]
    rise = final["val_loss"] - best["val_loss"]
    summary = {
        "run": out_dir.name,
        "out_dir": str(out_dir),
        "status": status,
        "params": params,
        "iter_num": final["iter_num"],
        "max_iters": max_iters,
        "best_val_loss": best["val_loss"],
        "best_iter": best["iter_num"],
        "best_val_ppl": best["val_ppl"],
        "best_val_bpc": best.get("val_bpc"),  # bits per character: the figure runs of any tokenizer share
        "final": {k: final[k] for k in ("iter_num", "train_loss", "val_loss", "val_ppl", "val_bpc", "val_acc",
                                        "val_top5")} | {k: round(v, 6) for k, v in classification.items()},
        "val_loss_tokens": final.get("val_loss_tokens"),  # the val tokens each val loss is over
        "gap_at_best": round(best["val_loss"] - best["train_loss"], 6),
        "gap_at_end": round(final["val_loss"] - final["train_loss"], 6),
        "overfit": rise > OVERFIT_MARGIN,
        "val_rise_after_best": round(rise, 6),
        "elapsed_s": round(elapsed_s, 3),
        "eval_s": round(state.eval_s, 3),  # the part of elapsed_s spent evaluating and saving checkpoints
        "train_s": round(train_s, 3),  # the rest: training, what a max_time budget counts
        "max_time": max_time or None,  # the budget in seconds; None: none, the run took max_iters steps at most
        "tokens_seen": final["tokens_seen"],
        "tokens_per_s": round(tokens_per_s, 1),
        "started_from": started_from,  # as run.json has it: None for a run from scratch
    }
    write_json(out_dir / "summary.json", summary)
    print(f"best val loss {summary['best_val_loss']:.4f} at iter {summary['best_iter']} | {summary['iter_num']} iters "
          f"in {format_duration(elapsed_s)} | {tokens_per_s:,.0f} tokens/s | val accuracy "
          f"{summary['final']['val_acc']:.1%}{STATUS_NOTES.get(status, '')}"
          f"{' | overfitting' if summary['overfit'] else ''} | results in {out_dir}")
    return summary


def eval_only(evaluation: dict, data_dir: str) -> dict:
    """eval_only's report of one evaluation (train.py's estimate_loss), printed; nothing is written. With init_from a
    run folder, it measures a trained model on any data: how much a fine-tuned model forgot."""
    val_acc, val_top5 = accuracies(evaluation["val_counts"])
    print(f"{data_dir}: val loss {evaluation['val_loss']:.4f}, train loss {evaluation['train_loss']:.4f}, "
          f"val accuracy {val_acc:.1%} (eval_only: nothing written)")
    return {"val_loss": evaluation["val_loss"], "train_loss": evaluation["train_loss"], "val_acc": val_acc,
            "val_top5": val_top5}


def format_duration(seconds: float) -> str:
    minutes, s = divmod(seconds, 60)
    return f"{int(minutes)}m {s:04.1f}s" if minutes else f"{s:.1f}s"


# ----------------------------------------------------------------------------------------------------------------------
# Reading

def present_names(record: dict) -> dict:
    """A record with every key under its present name (old runs said iter, iters, tokens and wall_time_s)."""
    renamed = {LEGACY_NAMES.get(key, key): value for key, value in record.items()}
    if isinstance(renamed.get("final"), dict):
        renamed["final"] = present_names(renamed["final"])
    return renamed


def read_metrics(run_dir, required=("iter_num", "train_loss", "val_loss")) -> list[dict]:
    """The evaluations in run_dir/metrics.jsonl, in order; each must hold a number for every key in required."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run folder '{run_dir}' not found: {NOT_A_RUN}")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UsageError(f"run folder '{run_dir}' has no metrics.jsonl: {NOT_A_RUN}")
    records = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path} line {line_number} is not valid JSON ({e.msg}): fix or delete it") from None
        if not isinstance(record, dict):
            raise UsageError(f"{path} line {line_number} is not a JSON object: fix or delete that line")
        record = present_names(record)
        if "train_s" not in record and isinstance(record.get("elapsed_s"), (int, float)):  # a run before max_time
            record["train_s"] = round(record["elapsed_s"] - record.get("eval_s", 0.0), 3)
        for key in required:
            value = record.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problem = "has no" if key not in record else f"has a non-number ({value!r}) for"
                raise UsageError(f"{path} line {line_number} {problem} '{key}': fix or delete that line")
        records.append(record)
    if not records:
        raise UsageError(f"{path} is empty: the run has not reached its first evaluation yet")
    return records


def samples_over_training(metrics: list[dict]) -> list[tuple[int, str]]:
    """(iter_num, text) of each evaluation that wrote a sample (train.py's eval_sample_chars), in order."""
    return [(m["iter_num"], m["sample"]) for m in metrics if isinstance(m.get("sample"), str)]


def read_summary(run_dir: Path) -> dict | None:
    """summary.json, or None for a run that has not finished (it has none)."""
    path = Path(run_dir) / "summary.json"
    return present_names(read_json(path, fix="delete it and train again")) if path.is_file() else None


def read_config(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / "config.json", fix=NOT_A_RUN)


def read_run_info(run_dir: Path) -> dict:
    """run.json, or an empty dict where it is missing."""
    path = Path(run_dir) / "run.json"
    return read_json(path, fix=NOT_A_RUN) if path.is_file() else {}


def best_eval(metrics: list[dict]) -> dict | None:
    """The evaluation with the lowest val loss (the first one on a tie); None if no val loss is a finite number."""
    finite = [m for m in metrics if math.isfinite(m["val_loss"])]
    return min(finite, key=lambda m: m["val_loss"]) if finite else None


def find_runs(root: Path) -> list[Path]:
    """Every folder under root, at any depth, whose metrics.jsonl holds at least one evaluation, in natural order."""
    # A run that has not reached its first evaluation has an empty metrics.jsonl and nothing to show yet.
    runs = [p.parent for p in root.rglob("metrics.jsonl") if p.is_file() and p.read_text(encoding="utf-8").strip()]
    if not runs:
        raise UsageError(f"no runs with a metrics.jsonl under {root}/: train one first (python train.py "
                         "config/cpu.py) or name run folders")
    return sorted(runs, key=lambda path: [int(part) if part.isdigit() else part  # c2 before c10
                                          for part in re.split(r"(\d+)", str(path))])
