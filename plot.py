"""Overlay the loss curves of training runs in one PNG, and print a table of their best val losses.

    python plot.py                                        # every run under out/ -> out/val_loss.png
    python plot.py out/tune/c5 out/tune/c12 --x=time      # two runs against wall-clock seconds
    python plot.py out/cpu --x=tokens --output=figs/cpu.png

Each run is drawn in its own colour: the val loss as a solid line, the train loss dashed, and a marker at the best
val loss. The legend gives each run's name (its folder relative to out/) and best val loss.
compare.py and tune.py draw their plots with plot_runs(); read_metrics() reads one run's metrics.jsonl.
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from configurator import UsageError, build_config, ensure_dir, parse_overrides, run_command

# --x choice -> (metrics.jsonl key, axis label)
X_AXES = {
    "iter": ("iter", "iteration"),
    "time": ("elapsed_s", "elapsed time (seconds)"),
    "tokens": ("tokens", "tokens trained on"),
}
LOSS_KEYS = ("iter", "train_loss", "val_loss")


@dataclass
class PlotConfig:
    output: str = "out/val_loss.png"  # the PNG to write; its folder is created
    x: Literal["iter", "time", "tokens"] = "iter"  # x axis: iter, time (elapsed seconds) or tokens trained on


# ----------------------------------------------------------------------------------------------------------------------
# Reading runs

def read_metrics(run_dir: Path, required=LOSS_KEYS) -> list[dict]:
    """The evaluations in run_dir/metrics.jsonl, in order; each must hold a number for every key in required."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run folder '{run_dir}' not found: give the out_dir of a train.py run")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UsageError(f"run folder '{run_dir}' has no metrics.jsonl: give the out_dir of a train.py run")
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
        for key in required:
            value = record.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problem = "has no" if key not in record else f"has a non-number ({value!r}) for"
                raise UsageError(f"{path} line {line_number} {problem} '{key}': fix or delete that line")
        records.append(record)
    if not records:
        raise UsageError(f"{path} is empty: the run has not reached its first evaluation yet")
    return records


def best_eval(metrics: list[dict]) -> dict | None:
    """The evaluation with the lowest val loss (the first one on a tie); None if no val loss is a finite number."""
    finite = [m for m in metrics if math.isfinite(m["val_loss"])]
    return min(finite, key=lambda m: m["val_loss"]) if finite else None


def find_runs(root: Path) -> list[Path]:
    """Every folder under root, at any depth, whose metrics.jsonl holds at least one evaluation."""
    # A run that has not reached its first evaluation has an empty metrics.jsonl and nothing to draw yet;
    # skipping it lets plot.py run while training is starting up.
    runs = [p.parent for p in root.rglob("metrics.jsonl") if p.is_file() and p.read_text(encoding="utf-8").strip()]
    if not runs:
        raise UsageError(f"no runs with a metrics.jsonl under {root}/: train one first (python train.py "
                         "config/cpu.py) or name run folders")
    return sorted(runs, key=natural_key)


def natural_key(path: Path) -> list:
    """Sort key that puts c2 before c10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def run_names(run_dirs: list[Path], out_root: Path = Path("out")) -> list[str]:
    """Each run's folder relative to out_root when it is under it, else its folder name; a name that two runs
    would share becomes the path as given, so the legend and report never show two runs under one name."""
    root = out_root.resolve()
    names = []
    for run_dir in run_dirs:
        resolved = Path(run_dir).resolve()
        under_root = resolved.is_relative_to(root) and resolved != root
        names.append(resolved.relative_to(root).as_posix() if under_root else resolved.name)
    return [str(d) if names.count(n) > 1 else n for d, n in zip(run_dirs, names)]


# ----------------------------------------------------------------------------------------------------------------------
# Drawing

def needs_log_scale(losses: list[float]) -> bool:
    """True when the losses span more than a factor of 2 (and are all positive, as a log axis needs)."""
    finite = [v for v in losses if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 2


def run_colors(count: int) -> list:
    """A distinct colour per run: matplotlib's default cycle repeats after 10, and a repeated colour would make
    two runs' curves indistinguishable."""
    from matplotlib import colormaps
    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["turbo"](i / (count - 1)) for i in range(count)]


def plot_runs(run_dirs, output, x: str = "iter", out_root: Path = Path("out")):
    """Draw the runs' val (solid) and train (dashed) losses against x, mark each best val loss, write a PNG at output
    (creating its folder) and return the matplotlib Figure. Raises UsageError for a bad x, output or run folder."""
    # The Figure is built directly on an Agg canvas, without pyplot: it needs no display, and leaves no global
    # figure behind when tune.py draws one plot after another.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, FuncFormatter, LogLocator, NullFormatter

    if x not in X_AXES:
        raise UsageError(f"x must be one of {', '.join(X_AXES)}, got {x!r}")
    x_key, x_label = X_AXES[x]
    output = Path(output)
    if output.suffix.lower() != ".png":
        raise UsageError(f"output '{output}' must be a .png file")
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise UsageError("no runs to plot: give at least one run folder")
    all_metrics = [read_metrics(d, required=LOSS_KEYS + (x_key,)) for d in run_dirs]
    names = run_names(run_dirs, out_root)

    fig = Figure(figsize=(9, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, metrics, color in zip(names, all_metrics, run_colors(len(run_dirs))):
        xs = [m[x_key] for m in metrics]
        best = best_eval(metrics)
        label = f"{name} (best {best['val_loss']:.3f})" if best else f"{name} (no finite val loss)"
        ax.plot(xs, [m["val_loss"] for m in metrics], linestyle="-", color=color, label=label)
        # Labels that start with "_" stay out of the legend: one entry per run, the y label explains the dashes.
        ax.plot(xs, [m["train_loss"] for m in metrics], linestyle="--", color=color, alpha=0.7,
                label=f"_train {name}")
        if best:
            ax.plot([best[x_key]], [best["val_loss"]], linestyle="None", marker="o", markersize=7, color=color,
                    markeredgecolor="black", label=f"_best {name}")

    losses = [m[key] for metrics in all_metrics for m in metrics for key in ("val_loss", "train_loss")]
    if needs_log_scale(losses):
        # The first evaluation (~4.2, an untrained model) sits far above the rest (~1.5): on a linear axis it
        # squeezes the end of training, where runs differ, into a sliver. A log axis gives equal ratios equal room.
        ax.set_yscale("log")
        # Losses rarely span a decade, so the default ticks (powers of 10) would leave the axis nearly unlabelled.
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    if x == "tokens":
        ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlabel(x_label)
    ax.set_ylabel("loss (solid: val, dashed: train)")
    ax.set_title("validation loss" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")

    ensure_dir(str(output.parent), key="output folder")
    fig.savefig(output, format="png", dpi=120)
    return fig


# ----------------------------------------------------------------------------------------------------------------------
# The table

def summary_table(names: list[str], all_metrics: list[list[dict]]) -> str:
    """Plain-text table: run, best val loss, the iteration it was reached at, final val loss, number of evals."""
    header = ("run", "best val loss", "at iter", "final val loss", "evals")
    rows = []
    for name, metrics in zip(names, all_metrics):
        best = best_eval(metrics)
        rows.append((name, f"{best['val_loss']:.4f}" if best else "-", str(best["iter"]) if best else "-",
                     f"{metrics[-1]['val_loss']:.4f}", str(len(metrics))))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in (header, *rows)]
    return "\n".join(line.rstrip() for line in lines)


# ----------------------------------------------------------------------------------------------------------------------
# Command line

def split_arguments(argv) -> tuple[list[str], dict]:
    """(run folders, options): arguments starting with -- are --key=value options, the rest are run folders."""
    run_args = [a for a in argv if not a.startswith("--")]
    options = [a for a in argv if a.startswith("--")]
    for option in options:
        # configurator reads a bare --key as true, which would silently take the next argument as a run folder.
        if "=" not in option:
            raise UsageError(f"option '{option}' needs a value: write {option}=VALUE")
    return run_args, parse_overrides(options)


def main(argv=None):
    return run_command(plot, argv, __doc__, PlotConfig)


def plot(argv: list[str]):
    run_args, overrides = split_arguments(argv)
    cfg = build_config(PlotConfig, None, overrides)
    out_root = Path("out")
    run_dirs = [Path(a) for a in run_args] if run_args else find_runs(out_root)
    fig = plot_runs(run_dirs, cfg.output, x=cfg.x, out_root=out_root)
    all_metrics = [read_metrics(d) for d in run_dirs]
    print(summary_table(run_names(run_dirs, out_root), all_metrics))
    print(f"wrote {cfg.output}")
    return fig


if __name__ == "__main__":
    main()
