"""Generate text from a trained run.

    python sample.py                                   # the most recently updated run under out/
    python sample.py --out_dir=out/cpu --start="ROMEO:" --num_samples=2 --max_new_tokens=300
    python sample.py --start=FILE:prompt.txt --temperature=0.5

Loads out_dir/best.pt (else ckpt.pt). The checkpoint carries the vocabulary (a BPE run's with its tokenizer, whose
prompt then needs the tokenizers package), so nothing else is needed.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

import bpe
from checkpoint import load_model
from configurator import UsageError, build_config, parse_args, refuse_positional, run_command
from data import decode, encode
from devices import resolve_device
from model import GPT


@dataclass
class SampleConfig:
    out_dir: str = ""  # the run to sample from; empty: the most recently updated run under out/
    start: str = "\n"  # the prompt, or FILE:path to read it from a file
    num_samples: int = 3  # how many samples to print
    max_new_tokens: int = 500  # tokens generated per sample: characters, or BPE tokens
    temperature: float = 0.8  # > 0; below 1 is more predictable, above 1 more surprising
    top_k: int = 0  # sample only among the k likeliest tokens; 0 = all of them, 1 = always the likeliest
    seed: int = 1337  # the same seed, prompt and checkpoint give the same text
    device: str = "auto"  # auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps
    cache: Literal["exact", "approximate", "none"] = "exact"  # approximate: faster past block_size but inexact


def validate(cfg: SampleConfig) -> None:
    problems = []
    if cfg.num_samples <= 0:
        problems.append(f"'num_samples' must be a positive integer, got {cfg.num_samples}")
    if cfg.max_new_tokens <= 0:
        problems.append(f"'max_new_tokens' must be a positive integer, got {cfg.max_new_tokens}")
    if not cfg.temperature > 0:
        problems.append(f"'temperature' must be > 0, got {cfg.temperature}; for the likeliest character every time "
                        "use --top_k=1")
    if cfg.top_k < 0:
        problems.append(f"'top_k' must be >= 0 (0 = no limit), got {cfg.top_k}")
    if problems:
        raise UsageError(problems)


def find_latest_run(root: Path = Path("out")) -> Path:
    """The run folder under root whose checkpoint was written most recently."""
    patterns = ("*/best.pt", "*/ckpt.pt", "*/*/best.pt", "*/*/ckpt.pt")  # runs, and trials of a tune.py search
    checkpoints = [p for pattern in patterns for p in root.glob(pattern)]
    if not checkpoints:
        raise UsageError(f"no run with a checkpoint under {root}/: train one first (python train.py config/cpu.py) "
                         "or pass --out_dir")
    return max(checkpoints, key=lambda p: p.stat().st_mtime).parent


def read_prompt(start: str) -> str:
    """The prompt: start itself, or the text of the file that start=FILE:path names."""
    prompt = start
    if start.startswith("FILE:"):
        path = Path(start[len("FILE:"):])
        try:
            prompt = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"prompt file '{path}' not found: give --start=FILE: the path of an existing text "
                             "file") from None
        except UnicodeDecodeError:
            raise UsageError(f"prompt file '{path}' is not UTF-8 text") from None
    if not prompt:
        raise UsageError("the prompt is empty: give at least one character, e.g. --start=\"\\n\"")
    return prompt


def main(argv=None):
    return run_command(sample, argv, __doc__, SampleConfig)


def generate_texts(model: GPT, vocab: list[str], prompt: str, num_samples: int, max_new_tokens: int,
                   temperature: float, top_k: int, seed: int, device: str, cache: str = "exact") -> list[str]:
    """num_samples continuations of prompt (included in each), reproducible for the same seed.

    The samples are generated together, as one batch: with the KV cache each step reads the weights once for all
    of them, and reading the weights is most of a step's time on a CPU."""
    idx = torch.tensor([encode(prompt, vocab)], dtype=torch.long, device=device)  # (1, T)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(idx.expand(num_samples, -1), max_new_tokens, temperature=temperature,
                         top_k=top_k if top_k > 0 else None, cache=cache, generator=generator)  # (num_samples, T + new)
    return [decode(row, vocab) for row in out.tolist()]


EVAL_SAMPLE_PROMPT = "\n"  # where the text a run writes at its evaluations starts: a new line, as here by default


def sample_due(iter_num: int, eval_interval: int, ending: bool) -> bool:
    """Whether train.py's evaluation at iter_num writes a sample: at iter 0, at 1, 2, 4, 8, ... eval_intervals, and at
    the run's end. The text changes fastest early; and on a GPU, where generating is mostly kernel launches, a sample
    at every evaluation of a long run would slow it by more than 2% (BENCHMARKS.md)."""
    evaluations, rest = divmod(iter_num, eval_interval)
    return ending or (rest == 0 and evaluations & (evaluations - 1) == 0)


@torch.no_grad()
def evaluation_sample(model: GPT, vocab: list[str], max_new_tokens: int, seed: int, iter_num: int,
                      eval_interval: int, ending: bool) -> str | None:
    """The text train.py writes at its evaluation at iter_num (metrics.jsonl's "sample"; its eval_sample_chars), None
    where none is due (sample_due) or for 0 characters: from a new line, with the same seed each time, so that a
    run's samples differ only by what the model has learnt. The model samples in eval mode (no dropout) and goes back
    to the mode it was in; the generator is its own, so training's random state is untouched and a resumed run stays
    exact."""
    if max_new_tokens == 0 or not sample_due(iter_num, eval_interval, ending):
        return None
    subwords = isinstance(vocab, bpe.Vocabulary)  # any text encodes; max_new_tokens tokens hold as many characters
    prompt = EVAL_SAMPLE_PROMPT if subwords or EVAL_SAMPLE_PROMPT in vocab else vocab[0]
    training, device = model.training, next(model.parameters()).device
    model.eval()
    text, = generate_texts(model, vocab, prompt, 1, max_new_tokens, SampleConfig.temperature, 0, seed, device)
    model.train(training)
    return text[:len(prompt) + max_new_tokens]


def sample(argv=None) -> list[str]:
    positional, options = parse_args(argv)
    refuse_positional(positional)
    cfg = build_config(SampleConfig, None, options)
    validate(cfg)
    device = resolve_device(cfg.device)
    if cfg.out_dir:
        out_dir = Path(cfg.out_dir)
    else:
        out_dir = find_latest_run()
        print(f"sampling from {out_dir} (the most recently updated run; choose another with --out_dir)")
    model, vocab, info = load_model(out_dir, device)
    if cfg.top_k > len(vocab):
        raise UsageError(f"'top_k' is {cfg.top_k}, more than the model's {len(vocab)} tokens: use at most "
                         f"{len(vocab)}, or 0 for all of them")
    prompt = read_prompt(cfg.start)
    encode(prompt, vocab)  # refuse unknown characters before printing anything
    print(f"{info['path']}: iter {info['iter_num']}, val loss {info['best_val_loss']:.4f}")
    texts = generate_texts(model, vocab, prompt, cfg.num_samples, cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                           cfg.seed, device, cfg.cache)
    for text in texts:
        print(text)
        print("-" * 40)
    return texts


if __name__ == "__main__":
    main()
