"""Overlay the loss curves of training runs in one PNG, and print a table of their best val losses.

    python plot.py                                              # every run under out/ -> out/val_loss.png
    python plot.py out/cpu_1min out/cpu_2min --x=train_s     # two runs against seconds of training
    python plot.py out/cpu --x=tokens_seen --output=figs/cpu.png

Each run is drawn in its own colour: the val loss as a solid line, the train loss dashed, and a marker at the best
val loss. The legend gives each run's name (its folder relative to out/) and best val loss. Runs whose tokenizers
differ (characters, BPE of some size) are drawn in val bits per character instead: a loss per token of one tokenizer
is not one of another's.
compare.py and tune.py draw their plots with plot_runs().
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from configurator import UsageError, build_config, parse_args, run_command
from files import ensure_dir, write_atomic
from checkpoint import tokenizer_of
from runlog import best_eval, find_runs, read_metrics

# --x choice (a metrics.jsonl key) -> axis label
X_AXES = {"iter_num": "iteration", "train_s": "seconds of training (evaluations left out)",
          "elapsed_s": "seconds since training began (evaluations included)", "tokens_seen": "tokens trained on"}
LOSS_KEYS = ("iter_num", "train_loss", "val_loss")


@dataclass
class PlotConfig:
    output: str = "out/val_loss.png"  # the PNG to write; its folder is created
    x: Literal["iter_num", "train_s", "elapsed_s", "tokens_seen"] = "iter_num"  # the x axis: a metrics.jsonl column


# ----------------------------------------------------------------------------------------------------------------------
# Drawing

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


def plot_runs(run_dirs, output, x: str = "iter_num", out_root: Path = Path("out")):
    """Draw the runs' val (solid) and train (dashed) losses against x, mark each best val loss, write a PNG at output
    (creating its folder) and return the matplotlib Figure. Raises UsageError for a bad x, output or run folder."""
    # The Figure is built directly on an Agg canvas, without pyplot: it needs no display, and leaves no global
    # figure behind when tune.py draws one plot after another.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, FuncFormatter, LogLocator, NullFormatter

    if x not in X_AXES:
        raise UsageError(f"x must be one of {', '.join(X_AXES)}, got {x!r}")
    output = Path(output)
    if output.suffix.lower() != ".png":
        raise UsageError(f"output '{output}' must be a .png file")
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise UsageError("no runs to plot: give at least one run folder")
    tokenizers = {d: tokenizer_of(d) for d in run_dirs}
    by_character = len(set(tokenizers.values()) - {None}) > 1
    y = "val_bpc" if by_character else "val_loss"  # bpc: the train loss, per token, is left out
    all_metrics = [read_metrics(d, required=LOSS_KEYS + (x, y)) for d in run_dirs]
    names = run_names(run_dirs, out_root)

    fig = Figure(figsize=(9, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for run_dir, name, metrics, color in zip(run_dirs, names, all_metrics, run_colors(len(run_dirs))):
        xs = [m[x] for m in metrics]
        best = best_eval(metrics)
        label = f"{name} (best {best[y]:.3f})" if best else f"{name} (no finite val loss)"
        if by_character:
            label = f"{label[:-1]}; {tokenizers[run_dir]})" if best else label
        ax.plot(xs, [m[y] for m in metrics], linestyle="-", color=color, label=label)
        # Labels that start with "_" stay out of the legend: one entry per run, the y label explains the dashes.
        if not by_character:
            ax.plot(xs, [m["train_loss"] for m in metrics], linestyle="--", color=color, alpha=0.7,
                    label=f"_train {name}")
        if best:
            ax.plot([best[x]], [best[y]], linestyle="None", marker="o", markersize=7, color=color,
                    markeredgecolor="black", label=f"_best {name}")

    losses = [m[key] for metrics in all_metrics for m in metrics for key in ((y,) if by_character else LOSS_KEYS[1:])]
    if needs_log_scale(losses):
        # The first evaluation (~4.2, an untrained model) sits far above the rest (~1.5): on a linear axis it
        # squeezes the end of training, where runs differ, into a sliver. A log axis gives equal ratios equal room.
        ax.set_yscale("log")
        # Losses rarely span a decade, so the default ticks (powers of 10) would leave the axis nearly unlabelled.
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    if x == "tokens_seen":
        ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel("val bits per character" if by_character else "loss (solid: val, dashed: train)")
    title = "validation bits per character (the runs' tokenizers differ)" if by_character else "validation loss"
    ax.set_title(title + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")

    ensure_dir(str(output.parent), key="output folder")
    write_atomic(output, lambda f: fig.savefig(f, format="png", dpi=120))
    return fig


# ----------------------------------------------------------------------------------------------------------------------
# The table

def summary_table(names: list[str], all_metrics: list[list[dict]]) -> str:
    """Plain-text table: run, best val loss, its bits per character, the iteration it was reached at, final val loss,
    number of evals."""
    header = ("run", "best val loss", "bits/char", "at iter", "final val loss", "evals")
    rows = []
    for name, metrics in zip(names, all_metrics):
        best = best_eval(metrics)
        bpc = f"{best['val_bpc']:.4f}" if best and "val_bpc" in best else "-"
        rows.append((name, f"{best['val_loss']:.4f}" if best else "-", bpc, str(best["iter_num"]) if best else "-",
                     f"{metrics[-1]['val_loss']:.4f}", str(len(metrics))))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in (header, *rows)]
    return "\n".join(line.rstrip() for line in lines)


# ----------------------------------------------------------------------------------------------------------------------
# Command line

def main(argv=None):
    return run_command(plot, argv, __doc__, PlotConfig)


def plot(argv: list[str]):
    run_args, options = parse_args(argv)
    cfg = build_config(PlotConfig, None, options)
    out_root = Path("out")
    run_dirs = [Path(a) for a in run_args] if run_args else find_runs(out_root)
    fig = plot_runs(run_dirs, cfg.output, x=cfg.x, out_root=out_root)
    tokenizers = sorted({tokenizer_of(d) for d in run_dirs} - {None})
    if len(tokenizers) > 1:
        print(f"the runs' tokenizers differ ({', '.join(tokenizers)}): plotted in val bits per character")
    all_metrics = [read_metrics(d) for d in run_dirs]
    print(summary_table(run_names(run_dirs, out_root), all_metrics))
    print(f"wrote {cfg.output}")
    return fig


if __name__ == "__main__":
    main()
