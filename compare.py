"""Compare training runs side by side: a markdown report with their settings, results, loss curves, what each
character of context and each layer gives them, and their samples.

    python compare.py out/nanogpt_cpu out/cpu                       # before and after tuning -> out/compare/
    python compare.py out/a out/b out/c --output=out/abc --start="ROMEO:" --max_new_tokens=200

Writes OUTPUT/report.md, OUTPUT/val_loss.png and OUTPUT/context.png. The first run is the reference: each other
run's row lists the settings in which it differs from it. Each run's val loss at each position of its window and
after each layer (explain.py's measures, over the run's own evaluation windows) show where a gain came from: more
context, or more layers. Every run's sample comes from the same prompt and seed, so the text before and after a
change can be read side by side, followed by the text the run wrote at its evaluations.
"""

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from checkpoint import checkpoint_path, load_model, tokenizer_of
from configurator import UsageError, build_config, parse_args, run_command
from data import encode
from explain import draw_context_curves, noun, run_val_measures
from files import ensure_dir, write_atomic
from plot import plot_runs, run_names
from runlog import (best_eval, format_duration, read_config, read_metrics, read_run_info, read_summary,
                    samples_over_training)
from sample import generate_texts, read_prompt
from tables import fenced, fmt, markdown_table, text_over_training

# config.json keys that say where or how a run was executed, not what was trained: a difference in them is noise.
# (init_from says where the weights started, but a resumed run's says resume: the report uses origin() instead.)
BOOKKEEPING_KEYS = {"out_dir", "device", "dtype", "compile", "compile_mode", "log_interval",
                    "always_save_checkpoint"}
TEMPERATURE = 0.8
TOP_K = 0  # no cut: sample among all characters
# Samples are drawn on the CPU: the same seed then gives the same text on every machine.
SAMPLE_DEVICE = "cpu"


@dataclass
class CompareConfig:
    output: str = "out/compare"  # the folder for report.md and val_loss.png; created if missing
    start: str = "\n"  # the prompt every run's sample starts from, or FILE:path to read it from a file
    seed: int = 1337  # the sampling seed, the same for every run
    max_new_tokens: int = 300  # characters generated per sample
    inside: bool = True  # also measure each run's val loss by context position and by layer (reads its val split)


# ----------------------------------------------------------------------------------------------------------------------
# Reading a run

def config_differences(config: dict, reference: dict) -> list[str]:
    """'key=value' for each setting, bookkeeping aside, whose value differs from the reference run's."""
    keys = [k for k in reference if k not in BOOKKEEPING_KEYS]
    keys += [k for k in config if k not in reference and k not in BOOKKEEPING_KEYS]
    missing = object()
    return [f"{key}={format_setting(config.get(key, missing), missing)}"
            for key in keys if config.get(key, missing) != reference.get(key, missing)]


def origin(run_dir: Path) -> str:
    """Where a run's weights started, whether it was resumed or not: scratch, or the checkpoint a run from a trained
    one started from (run.json names it)."""
    started_from = read_run_info(run_dir).get("started_from")
    return started_from["path"] if started_from else "scratch"


def format_setting(value, missing) -> str:
    if value is missing:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"  # as it is typed on the command line
    return str(value)


def run_results(run_dir: Path, metrics: list[dict]) -> dict:
    """The numbers of the report's table for one run, from summary.json; a run without one (it was interrupted)
    gets what metrics.jsonl and run.json hold, and None for the rest."""
    summary = read_summary(run_dir)
    if summary is not None:
        at_best = next((m for m in metrics if m["iter_num"] == summary.get("best_iter")), None)
        return {
            "status": summary.get("status", "finished"),
            "params": summary.get("params"),
            "best_val_loss": summary.get("best_val_loss"),
            "best_iter": summary.get("best_iter"),
            "best_val_ppl": summary.get("best_val_ppl"),
            "best_val_bpc": summary.get("best_val_bpc", at_best.get("val_bpc") if at_best else None),
            "val_acc": at_best.get("val_acc") if at_best else None,
            "gap": summary.get("gap_at_best"),
            "elapsed_s": summary.get("elapsed_s"),
            "tokens_per_s": summary.get("tokens_per_s"),
        }
    best = best_eval(metrics)
    return {
        "status": "no summary.json (interrupted?)",
        "params": read_run_info(run_dir).get("params"),
        "best_val_loss": best["val_loss"] if best else None,
        "best_iter": best["iter_num"] if best else None,
        "best_val_ppl": math.exp(best["val_loss"]) if best else None,
        "best_val_bpc": best.get("val_bpc") if best else None,
        "val_acc": best.get("val_acc") if best else None,
        "gap": best["val_loss"] - best["train_loss"] if best else None,
        "elapsed_s": None,
        "tokens_per_s": None,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Writing the report

def results_table(names: list[str], differences: list[list[str]], results: list[dict]) -> str:
    header = ["run", "differs from the first run", "params", "best val loss", "bits/char", "at iter", "val ppl",
              "top-1 acc", "train/val gap", "training time", "tokens/s", "status"]
    rows = [[name, "(reference)" if index == 0 else ", ".join(changed) or "(same settings)", fmt(r["params"], ","),
             fmt(r["best_val_loss"], ".4f"), fmt(r["best_val_bpc"], ".4f"), r["best_iter"],
             fmt(r["best_val_ppl"], ".2f"), fmt(r["val_acc"], ".1%"),
             fmt(r["gap"], "+.4f"), None if r["elapsed_s"] is None else format_duration(r["elapsed_s"]),
             fmt(r["tokens_per_s"], ",.0f"), r["status"]]
            for index, (name, changed, r) in enumerate(zip(names, differences, results))]
    return markdown_table(header, rows)


def inside_section(names: list[str], measures: list[dict], unit: str = "character") -> list[str]:
    """The report's lines on each run's val loss by context position and by layer (explain.run_val_measures); unit:
    what a position holds, "character" or, where a run reads BPE tokens, "token"."""
    longest = max(len(m["context_loss"]) for m in measures)
    # positions 1, 2-3, 4-7, ...: one position holds too few targets for a steady mean
    ranges = [(2 ** k, min(2 ** (k + 1) - 1, longest)) for k in range(longest.bit_length())]
    by_position = [[f"{first}" if first == last else f"{first}-{last}",
                    *[fmt(statistics.mean(m["context_loss"][first - 1:last]), ".4f")
                      if first <= len(m["context_loss"]) else None for m in measures]] for first, last in ranges]
    depth = max(len(m["layer_loss"]) for m in measures)
    by_layer = [["embeddings" if i == 0 else f"after block {i - 1}",
                 *[f"{m['layer_loss'][i]:.4f} ({m['layer_acc'][i]:.1%})" if i < len(m["layer_loss"]) else None
                   for m in measures]] for i in range(depth)]
    return ["## Where the loss goes: context and layers", "",
            "![val loss at each position of the window](context.png)", "",
            f"The mean val loss with 1, 2-3, 4-7, ... {unit}s of context (the positions in the window), over each "
            "run's own evaluation windows: a run that gains only at long contexts gained from its longer block.", "",
            markdown_table([f"{unit}s of context", *names], by_position), "",
            "The val loss (top-1 accuracy) if the model predicted from its residual stream after the embeddings and "
            "after each block (the final norm and output layer applied there): the last row of a run is the run "
            "itself, and the drop from row to row is what that block adds.", "",
            markdown_table(["residual stream", *names], by_layer), ""]


def write_report(path: Path, names: list[str], differences: list[list[str]], results: list[dict],
                 samples: list[tuple[str, str]], prompt: str, seed: int, max_new_tokens: int, inside: list[str],
                 over_training: list[list[tuple[int, str]]], tokenizers: list[str | None]) -> None:
    kinds = sorted(set(tokenizers) - {None})
    parts = [
        "# Run comparison",
        "",
        "The first run is the reference; each other row lists the settings in which that run differs from it. "
        "Best val loss, its bits per character, its iteration and perplexity; top-1 next-token accuracy and the "
        "train/val gap (val minus train loss) at that iteration.",
        "",
        results_table(names, differences, results),
        "",
        *([f"The runs' tokenizers differ ({'; '.join(f'{n}: {t}' for n, t in zip(names, tokenizers))}): a loss, "
           "a perplexity or an accuracy per token of one is not one of another's. Compare them in bits per "
           "character, which the plot shows.", ""] if len(kinds) > 1 else []),
        "![val loss curves](val_loss.png)",
        "",
        *inside,
        "## Samples",
        "",
        f"Each run's sample starts from the prompt {prompt!r}, with seed {seed}, temperature {TEMPERATURE}, "
        f"all tokens as candidates (no top_k) and {max_new_tokens} new tokens. Below each, the text the "
        "run wrote at its evaluations 0, 1, 2, 4, 8, ... and the last (train.py's eval_sample_chars), in order.",
    ]
    for name, (checkpoint, text), written in zip(names, samples, over_training):
        parts += ["", f"### {name}", "", f"From `{checkpoint}`.", "", fenced(text), ""]
        parts += text_over_training(written) if written else ["(no text at its evaluations)"]
    write_atomic(path, "\n".join(parts) + "\n")


# ----------------------------------------------------------------------------------------------------------------------
# Command line

def main(argv=None):
    return run_command(compare, argv, __doc__, CompareConfig)


def compare(argv: list[str]) -> Path:
    run_args, options = parse_args(argv)
    cfg = build_config(CompareConfig, None, options)
    if len(run_args) < 2:
        raise UsageError(f"compare needs at least two run folders, got {len(run_args)}: "
                         "python compare.py out/RUN_A out/RUN_B")
    if cfg.max_new_tokens <= 0:
        raise UsageError(f"'max_new_tokens' must be a positive integer, got {cfg.max_new_tokens}")
    prompt = read_prompt(cfg.start)
    run_dirs = [Path(a) for a in run_args]
    names = run_names(run_dirs)

    # Check every run before the slow part, so a mistake in the last one does not cost the samples of the others.
    all_metrics = [read_metrics(d) for d in run_dirs]
    configs = [read_config(d) | {"init_from": origin(d)} for d in run_dirs]
    for run_dir in run_dirs:
        checkpoint_path(run_dir)
    differences = [config_differences(config, configs[0]) for config in configs]
    results = [run_results(d, metrics) for d, metrics in zip(run_dirs, all_metrics)]

    models = [load_model(run_dir, SAMPLE_DEVICE) for run_dir in run_dirs]
    for name, (_, vocab, _) in zip(names, models):
        try:
            encode(prompt, vocab)  # the prompt's characters, in every character run's vocabulary
        except UsageError as e:
            raise UsageError(f"run {name}: {e}") from None

    samples = []
    for model, vocab, info in models:
        text, = generate_texts(model, vocab, prompt, 1, cfg.max_new_tokens, TEMPERATURE, TOP_K, cfg.seed,
                               SAMPLE_DEVICE)
        samples.append((info["path"], text))

    measures, inside = [], []
    try:
        for name, (model, vocab, _), config in zip(names, models, configs) if cfg.inside else ():
            print(f"measuring {name}'s val loss by context position and by layer (--inside=false skips this) ...")
            measures.append(run_val_measures(model, vocab, config))
    except UsageError as e:  # its data moved or changed: the rest of the report still stands
        print(f"not measured by context and layer: run {name}: {e}")
        measures, inside = [], ["## Where the loss goes: context and layers", "", f"Not measured: run {name}: {e}", ""]

    output = ensure_dir(cfg.output, key="output")
    plot_runs(run_dirs, output / "val_loss.png")
    unit = "token" if any(noun(vocab) == "token" for _, vocab, _ in models) else "character"
    if measures:
        draw_context_curves({name: m["context_loss"] for name, m in zip(names, measures)}, output / "context.png",
                            unit)
    report = output / "report.md"
    write_report(report, names, differences, results, samples, prompt, cfg.seed, cfg.max_new_tokens,
                 inside_section(names, measures, unit) if measures else inside,
                 [samples_over_training(metrics) for metrics in all_metrics], [tokenizer_of(d) for d in run_dirs])
    print(f"wrote {report}, {output / 'val_loss.png'}{' and context.png' if measures else ''}")
    return report


if __name__ == "__main__":
    main()
