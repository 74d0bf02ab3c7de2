"""Grid search over train.py settings: one run per combination, then a leaderboard and an overlay plot.

    python tune.py config/cpu.py learning_rate=2e-3,4e-3 n_layer=2,3 --max_iters=500
    python tune.py config/cpu.py learning_rate=1e-3,2e-3,4e-3 batch_size=8,16,32 --trials=4
    python tune.py config/cpu.py dropout=0,0.1 --name=dropout --max_iters=500

After the base config, each key=v1,v2,... is a setting to search; the search runs the cartesian product of them, or
--trials=N combinations of it picked at random (the same --sample_seed picks the same ones). Any other --key=value is
a train.py setting passed to every trial. Each trial is its own train.py run in out/tune-<name>/<trial>/, named after
its settings (e.g. learning_rate=0.002,n_layer=2). A trial that already has a summary.json with the same config is
skipped, so running the same command again resumes an interrupted search. The search writes leaderboard.md,
leaderboard.csv and val_loss.png into out/tune-<name>/.
"""

import csv
import dataclasses
import hashlib
import io
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from configurator import REPO_ROOT, UsageError, as_args, build_config, parse_args, run_command, split_options
from files import folder_in_use, lock_folder, write_atomic
from plot import plot_runs
from runlog import read_config, read_summary
from tables import fmt, markdown_table
from train import TrainConfig

TRAIN_SCRIPT = REPO_ROOT / "train.py"
TRAIN_INTERRUPTED = 130  # train.py's exit status after Ctrl-C or SIGTERM (it saved ckpt.pt first)
LEADERBOARD_COLUMNS = ["best_val_loss", "best_val_bpc", "best_iter", "final_val_loss", "val_acc", "params",
                       "elapsed_s", "status", "error"]
# Settings tune.py decides itself for every trial, so a user may not set them.
RESERVED_KEYS = {"out_dir": "tune.py gives each trial its own out_dir under out/tune-<name>/: use --name to name "
                            "the search"}
# Leaderboard order after the finished trials: stopped before their end, then never started, then failed.
UNFINISHED_ORDER = {"interrupted": 0, "not run": 1, "failed": 2}


@dataclass
class TuneOptions:
    trials: int = 0  # run this many combinations of the grid, picked at random; 0 = all of them
    sample_seed: int = 0  # seeds the --trials pick: the same seed, grid and N give the same trials
    name: str = ""  # the search's name: it lands in out/tune-<name>/; default: the base config's file stem


# ----------------------------------------------------------------------------------------------------------------------
# The command line and the grid

def read_grid_specs(specs: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """The well-formed specs as a grid, and one problem per malformed spec (so the good ones can still be checked)."""
    grid, problems = {}, []
    if not specs:
        problems.append("nothing to search: after the base config, give at least one key=v1,v2, e.g. "
                        "learning_rate=2e-3,4e-3")
    for spec in specs:
        key, sep, values_text = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            problems.append(f"grid spec '{spec}' is not key=v1,v2: write it like n_layer=2,3")
            continue
        values = [v.strip() for v in values_text.split(",")]
        if not values_text.strip():
            problems.append(f"grid spec '{spec}' lists no values: write it like {key}=v1,v2")
        elif "" in values:
            problems.append(f"grid spec '{spec}' has an empty value: separate values by single commas, no spaces")
        elif key in grid:
            problems.append(f"grid key '{key}' is given twice: list all its values in one spec ({key}=v1,v2,...)")
        else:
            grid[key] = list(dict.fromkeys(values))  # a value listed twice would be the same trial twice
    return grid, problems


def convert_grid(grid: dict[str, list[str]], defaults_cls=TrainConfig) -> dict[str, list]:
    """Check each key is a setting of defaults_cls and convert each value by the setting's type.

    Values that convert to the same thing (2e-3 and 0.002) are kept once. Raises UsageError naming every bad key
    (with a "did you mean") and every value of the wrong type.
    """
    typed, problems = {}, []
    for key, values in grid.items():
        converted = []
        for value in values:
            try:
                converted.append(getattr(build_config(defaults_cls, None, {key: value}, where="in the grid"), key))
            except UsageError as e:
                problems += [p for p in e.problems if p not in problems]  # an unknown key fails once per value
        typed[key] = list(dict.fromkeys(converted))
    if problems:
        raise UsageError(problems)
    return typed


def grid_size(grid: dict[str, list]) -> int:
    return math.prod(len(values) for values in grid.values())


def combination(grid: dict[str, list], index: int) -> dict:
    """The index-th combination of the cartesian product, in itertools.product order (the last key varies fastest)."""
    settings = {}
    for key in reversed(list(grid)):
        index, position = divmod(index, len(grid[key]))
        settings[key] = grid[key][position]
    return {key: settings[key] for key in grid}


def trial_settings(grid: dict[str, list], trials: int = 0, seed: int = 0) -> list[dict]:
    """The combinations to run: the whole grid, or `trials` distinct ones picked at random with `seed`.

    Picks indices rather than listing the product first, so sampling a few trials from a huge grid stays cheap.
    The picked trials keep their grid order. trials of 0, or at least the grid's size, means the whole grid.
    """
    total = grid_size(grid)
    if trials <= 0 or trials >= total:
        indices = range(total)
    else:
        indices = sorted(random.Random(seed).sample(range(total), trials))
    return [combination(grid, i) for i in indices]


def value_text(value) -> str:
    """A setting as text that train.py's command line converts back to the same value."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)  # repr round-trips a float exactly
    return str(value)


def trial_name(settings: dict) -> str:
    """A stable, filesystem-safe folder name from a trial's settings: 'learning_rate=0.002,n_layer=2'.

    Characters outside a safe set become '_'. When that changes the name, or it is long, a short hash of the full
    settings is appended, so two different trials never share a folder.
    """
    text = ",".join(f"{key}={value_text(value)}" for key, value in settings.items())
    safe = re.sub(r"[^A-Za-z0-9._,=+-]", "_", text)
    if safe != text or len(safe) > 120:
        safe = f"{safe[:120]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return safe


def parse_command(argv: list[str]) -> dict:
    """Check the whole command line before anything runs; every problem is reported at once, naming its key."""
    positional, options = parse_args(argv)
    (tune_raw, train_raw), problems = split_options(options, TuneOptions, TrainConfig)
    base_config, specs = (positional[0], positional[1:]) if positional else (None, [])
    if base_config is None or ("=" in base_config and not Path(base_config).is_file()):
        problems.append("no base config file: give one first, e.g. python tune.py config/cpu.py n_layer=2,3")
        base_config, specs = None, positional

    tune_options = base_cfg = None
    try:
        tune_options = build_config(TuneOptions, None, tune_raw)
        if tune_options.trials < 0:
            problems.append(f"'trials' must be >= 0 (0 = the whole grid), got {tune_options.trials}")
        name = tune_options.name
        if name and (not re.fullmatch(r"[A-Za-z0-9._,=+-]+", name) or name in (".", "..")):
            problems.append(f"'name' must be a plain folder name (letters, digits and . _ - + = ,), got '{name}'")
        base_cfg = build_config(TrainConfig, base_config, train_raw) if base_config else None
    except UsageError as e:
        problems.extend(e.problems)
    grid, grid_problems = read_grid_specs(specs)
    problems.extend(grid_problems)
    try:
        grid = convert_grid(grid)
    except UsageError as e:
        problems.extend(e.problems)

    for key, why in RESERVED_KEYS.items():
        if key in train_raw or (grid and key in grid):
            problems.append(f"'{key}' cannot be set: {why}")
    for key in sorted(set(grid or {}) & set(train_raw)):
        problems.append(f"'{key}' is both in the grid and a --{key}= setting: keep one of them")
    if problems:
        raise UsageError(problems)
    return {"base_config": Path(base_config), "train_overrides": train_raw, "base_cfg": base_cfg, "grid": grid,
            "trials": tune_options.trials, "sample_seed": tune_options.sample_seed,
            "name": tune_options.name or Path(base_config).stem}


# ----------------------------------------------------------------------------------------------------------------------
# Trials

def comparable_config(cfg: TrainConfig) -> dict:
    """The settings a finished run's config.json must match: 'auto' values are resolved there, so they are left out."""
    settings = dataclasses.asdict(cfg)
    del settings["out_dir"]  # the trial's folder is its identity; the path may be spelled differently
    del settings["overwrite"]  # what became of an earlier run there: not a setting of this one
    if settings["lr_decay_iters"] == -1:
        settings["lr_decay_iters"] = settings["max_iters"]
    return {key: value for key, value in settings.items() if value != "auto"}


def finished_summary(trial_dir: Path, expected: dict) -> dict | None:
    """The trial's summary.json if it finished with exactly the expected settings, else None (it runs again)."""
    try:
        summary = read_summary(trial_dir)
        config = read_config(trial_dir) if summary is not None else {}
    except UsageError:  # a damaged record: the trial runs again
        return None
    if summary is None or any(key not in config or config[key] != value for key, value in expected.items()):
        return None
    return summary


def train_command(base_config: Path, trial_dir: Path, train_overrides: dict, settings: dict) -> list[str]:
    """train.py's command line for one trial. Paths are absolute because the trial runs from the repository root."""
    return [sys.executable, str(TRAIN_SCRIPT), str(base_config.resolve()), f"--out_dir={trial_dir.resolve()}",
            *as_args(train_overrides),
            *(f"--{key}={value_text(value)}" for key, value in settings.items())]


def run_trial(command: list[str], cwd: Path, log_path: Path, on_line=None) -> tuple[int, list[str]]:
    """Run one trial to the end in a subprocess, so its crash cannot end the search.

    Its stdout and stderr go, together, into log_path and line by line to on_line. Returns the exit status and
    the last non-empty output lines. A trial run again (it did not finish) adds to its log, after a line that says
    when it started.
    """
    # Unbuffered, so progress arrives as it happens; no inner progress bar, whose redraws would flood the log.
    env = os.environ | {"PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    tail = deque(maxlen=20)
    with open(log_path, "a", encoding="utf-8") as log, subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
            errors="replace", env=env) as proc:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(command)}\n")
        try:
            for line in proc.stdout:
                log.write(line)
                text = line.rstrip()
                if text:
                    tail.append(text)
                    if on_line:
                        on_line(text)
            proc.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the trial too: it saves ckpt.pt and exits. Keep logging until it does, which also
            # keeps a full pipe from blocking it. A second Ctrl-C ends it at once.
            try:
                for line in proc.stdout:
                    log.write(line)
                proc.wait()
            except KeyboardInterrupt:
                proc.kill()
            raise
    return proc.returncode, list(tail)


def error_line(output_tail: list[str], status: int) -> str:
    """Why a trial failed: its last output line (train.py's own "error: " prefix dropped), or its exit status."""
    if not output_tail:
        return f"train.py exited with status {status} and no output"
    return output_tail[-1].removeprefix("error: ")


def trial_result(name: str, settings: dict, run_dir: Path, status: str, summary: dict | None = None,
                 error: str | None = None) -> dict:
    return {"trial": name, "settings": settings, "run_dir": run_dir, "status": status, "summary": summary,
            "error": error}


# ----------------------------------------------------------------------------------------------------------------------
# The leaderboard

def leaderboard_rows(results: list[dict], grid_keys: list[str]) -> list[dict]:
    """One row per trial: finished ones best first by best val loss and ranked, then the rest (failed last)."""
    finished = [r for r in results if r["summary"] is not None]
    unfinished = [r for r in results if r["summary"] is None]
    finished.sort(key=lambda r: (ranking_loss(r["summary"]) is None, ranking_loss(r["summary"]) or 0))
    unfinished.sort(key=lambda r: UNFINISHED_ORDER.get(r["status"], 1))  # a stable sort keeps the grid order
    rows = []
    for position, result in enumerate(finished + unfinished, start=1):
        summary = result["summary"] or {}
        final = summary.get("final") or {}
        rows.append({
            "rank": position if result["summary"] is not None else None,
            "trial": result["trial"],
            **{key: result["settings"][key] for key in grid_keys},
            "best_val_loss": summary.get("best_val_loss"),
            "best_val_bpc": summary.get("best_val_bpc"),
            "best_iter": summary.get("best_iter"),
            "final_val_loss": final.get("val_loss"),
            "val_acc": final.get("val_acc"),
            "params": summary.get("params"),
            "elapsed_s": summary.get("elapsed_s"),
            "status": summary.get("status", result["status"]),
            "error": result["error"],
        })
    return rows


def ranking_loss(summary: dict) -> float | None:
    """What ranks a trial: its best val bits per character, which trials of any tokenizer share (within one
    tokenizer, the order of the val losses); the val loss of a run that predates it."""
    bpc = summary.get("best_val_bpc")
    return bpc if bpc is not None else summary.get("best_val_loss")


def leaderboard_csv(rows: list[dict], grid_keys: list[str]) -> str:
    columns = ["rank", "trial", *grid_keys, *LEADERBOARD_COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row[key] is None else row[key] for key in columns})
    return buffer.getvalue()


def leaderboard_markdown(rows: list[dict], grid_keys: list[str]) -> str:
    headers = {"rank": "rank", "trial": "trial", **{key: key for key in grid_keys}, "best_val_loss": "best val loss",
               "best_val_bpc": "bits/char", "best_iter": "best iter", "final_val_loss": "final val loss",
               "val_acc": "val accuracy", "params": "params", "elapsed_s": "training s", "status": "status",
               "error": "error"}
    if not any(row["error"] for row in rows):
        del headers["error"]
    formats = {"best_val_loss": ".4f", "best_val_bpc": ".4f", "final_val_loss": ".4f", "val_acc": ".1%", "params": ",",
               "elapsed_s": ".1f"}
    cells = [[fmt(row[key], formats[key], "") if key in formats else
              "" if row[key] is None else value_text(row[key]) for key in headers] for row in rows]
    return markdown_table(list(headers.values()), cells) + "\n"


def plot_finished(run_dirs: list[Path], output: Path, search_dir: Path) -> str | None:
    """Draw val_loss.png with plot.py; returns why it was not drawn, or None when it was."""
    if not run_dirs:
        return "no trial finished"
    try:
        plot_runs(run_dirs, output, out_root=search_dir)  # legend names: the trial folders
    except UsageError as e:
        return "; ".join(e.problems)
    return None


# ----------------------------------------------------------------------------------------------------------------------
# The search

def main(argv=None):
    more_help = ("\n  key=v1,v2 [key=v1,v2 ...]  after the base config: the settings to search (at least one)\n"
                 "\nEvery other --key=value is a train.py setting for every trial: python train.py --help lists them.")
    return run_command(search, argv, __doc__, TuneOptions, more_help)


def search(argv: list[str]) -> list[dict]:
    args = parse_command(argv)
    grid, name = args["grid"], args["name"]
    # One search at a time in a search folder; each trial locks its own folder too.
    with lock_folder(Path("out") / f"tune-{name}", key="search folder") as search_dir:
        chosen = trial_settings(grid, args["trials"], args["sample_seed"])
        print(f"search '{name}': {len(chosen)} of {grid_size(grid)} combinations of "
              f"{', '.join(f'{key} ({len(values)})' for key, values in grid.items())} | base {args['base_config']} | "
              f"runs in {search_dir}/")

        done, to_run = [], []
        for settings in chosen:
            trial = trial_name(settings)
            expected = comparable_config(dataclasses.replace(args["base_cfg"], **settings))
            summary = finished_summary(search_dir / trial, expected)
            if summary is not None:
                done.append(trial_result(trial, settings, search_dir / trial, "finished", summary))
            else:
                to_run.append((trial, settings, search_dir / trial))
        if done:
            print(f"skipped {len(done)} finished trial{'s' if len(done) != 1 else ''} (summary.json with the same "
                  f"config): {', '.join(r['trial'] for r in done)}")
        ran, interrupted = run_trials(to_run, args["base_config"], args["train_overrides"])

        grid_keys = list(grid)
        rows = leaderboard_rows(done + ran, grid_keys)
        table = leaderboard_markdown(rows, grid_keys) + seeds_line(rows, grid_keys)
        command_line = " ".join(["python tune.py", *argv])
        write_atomic(search_dir / "leaderboard.md", f"# Search {name}\n\n`{command_line}`\n\n{table}")
        write_atomic(search_dir / "leaderboard.csv", leaderboard_csv(rows, grid_keys))
        finished_dirs = [search_dir / row["trial"] for row in rows if row["rank"] is not None]  # best first
        not_plotted = plot_finished(finished_dirs, search_dir / "val_loss.png", search_dir)

        print("\n" + table)
        failed = sum(row["status"] == "failed" for row in rows)
        not_finished = len(rows) - len(finished_dirs) - failed
        print(f"{len(finished_dirs)} finished, {failed} failed"
              f"{f', {not_finished} not finished' if not_finished else ''}"
              f" | wrote {search_dir / 'leaderboard.md'}, {search_dir / 'leaderboard.csv'}"
              + (f", {search_dir / 'val_loss.png'}" if not_plotted is None else f" (no val_loss.png: {not_plotted})"))
        if interrupted:
            print("interrupted: run the same command again to resume; finished trials are skipped", file=sys.stderr)
            raise SystemExit(TRAIN_INTERRUPTED)
        return rows


def seeds_line(rows: list[dict], grid_keys: list[str]) -> str:
    """For a search over seeds alone (one recipe's spread): a line with the mean best val loss of its finished
    trials, to go under the leaderboard; else nothing."""
    losses = [row["best_val_loss"] for row in rows if row["rank"] is not None]
    if grid_keys != ["seed"] or len(losses) < 2:
        return ""
    return (f"\nmean best val loss over {len(losses)} seeds: {statistics.mean(losses):.4f} (from {min(losses):.4f} "
            f"to {max(losses):.4f})\n")


def run_trials(to_run: list[tuple[str, dict, Path]], base_config: Path,
               train_overrides: dict) -> tuple[list[dict], bool]:
    """Run each (trial name, settings, folder) in turn; returns their results and whether the user stopped early."""
    results, interrupted = [], False
    bar = tqdm(total=len(to_run), desc="trials", unit="trial", dynamic_ncols=True, disable=not to_run)
    for position, (trial, settings, trial_dir) in enumerate(to_run):
        if interrupted:
            results.append(trial_result(trial, settings, trial_dir, "not run"))
            continue
        holder = folder_in_use(trial_dir)
        if holder is not None:  # a train.py the user started there: leave its folder alone
            results.append(trial_result(trial, settings, trial_dir, "failed", error=f"in use by {holder}"))
            tqdm.write(f"  failed: {trial_dir} is in use by another run ({holder})")
            bar.update(1)
            continue
        trial_dir.mkdir(parents=True, exist_ok=True)
        bar.set_description(f"trial {position + 1}/{len(to_run)}")
        tqdm.write(f"trial {position + 1}/{len(to_run)}: {trial}")
        command = train_command(base_config, trial_dir, train_overrides, settings)
        try:
            status, tail = run_trial(command, REPO_ROOT, trial_dir / "train.log",
                                     on_line=lambda line: bar.set_postfix_str(line[:60]))
        except KeyboardInterrupt:
            status, tail = TRAIN_INTERRUPTED, []
        if status == TRAIN_INTERRUPTED:  # Ctrl-C or SIGTERM reached the trial: the user is stopping the search
            interrupted = True
            results.append(trial_result(trial, settings, trial_dir, "interrupted"))
            continue
        summary = finished_summary(trial_dir, {}) if status == 0 else None
        if summary is not None:
            results.append(trial_result(trial, settings, trial_dir, "finished", summary))
            tqdm.write(f"  {tail[-1] if tail else 'finished'}")
        else:
            error = error_line(tail, status) if status != 0 else "train.py exited without writing summary.json"
            results.append(trial_result(trial, settings, trial_dir, "failed", error=error))
            tqdm.write(f"  failed: {error} (full output in {trial_dir / 'train.log'})")
        bar.update(1)
    bar.close()
    return results, interrupted


if __name__ == "__main__":
    main()
