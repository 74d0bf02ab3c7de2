"""What an evaluation reads and counts: the windows of a split it reads (the whole split, or a fixed sample of windows
when it is large), the per-character counts of right and wrong predictions, and the accuracies and per-character
precision, recall and F1 drawn from them. train.py's estimate_loss runs the model over them.
"""

import math

import torch
import torch.nn.functional as F

# Evaluation needs no gradients, so on a GPU it takes bigger batches than training: fewer, larger matrix products,
# while the activations for them stay small. On a CPU the training batch is faster: it stays in the caches
# (BENCHMARKS.md, "CPU: evaluation batch").
EVAL_TOKENS_PER_BATCH = 16384
IGNORED = -1  # a target that counts for nothing (model.GPT's loss ignores it): what fills out a batch


def eval_batch_size(batch_size: int, block_size: int, device_type: str) -> int:
    """Windows per forward pass when evaluating a split: on a GPU about EVAL_TOKENS_PER_BATCH tokens, at least a
    batch; elsewhere the training batch."""
    return max(batch_size, EVAL_TOKENS_PER_BATCH // block_size) if device_type == "cuda" else batch_size


def window_starts(n_targets: int, block_size: int, max_tokens: int) -> list[int] | None:
    """Where the windows of block_size targets an evaluation reads start: None when the split has no more than
    max_tokens targets (or max_tokens is 0), so the whole split is read; else max_tokens // block_size windows spread
    evenly from the split's start to its end. They depend on nothing else: every evaluation of every run reads the
    same tokens."""
    n_windows = max(max_tokens // block_size, 1)
    if not max_tokens or n_targets <= max(max_tokens, block_size):
        return None
    last = n_targets - block_size
    return [i * last // max(n_windows - 1, 1) for i in range(n_windows)]


def eval_token_count(n_targets: int, block_size: int, max_tokens: int) -> int:
    """How many targets an evaluation of a split with n_targets reads (window_starts)."""
    starts = window_starts(n_targets, block_size, max_tokens)
    return n_targets if starts is None else len(starts) * block_size


def describe_reads(splits: dict, block_size: int) -> str:
    """The line a run prints at its start: how many tokens of each split ({name: (ids, max_tokens)}) an evaluation
    reads."""
    reads = [f"{eval_token_count(len(data) - 1, block_size, max_tokens):,} of {len(data) - 1:,} {name} tokens"
             for name, (data, max_tokens) in splits.items()]
    return f"each evaluation reads {' and '.join(reads)}"


def split_windows(data: torch.Tensor, block_size: int, batch_size: int, max_tokens: int = 0) -> list:
    """The (x, y) batches of (window_starts') windows an evaluation reads, ids as stored. The whole split: in
    non-overlapping windows, the last, shorter one covering the remainder, so every target counts once."""
    n_targets = len(data) - 1
    starts = window_starts(n_targets, block_size, max_tokens)
    if starts is not None:
        positions = torch.tensor(starts, device=data.device)[:, None] + torch.arange(block_size + 1, device=data.device)
        return [(data[p[:, :-1]], data[p[:, 1:]]) for p in positions.split(batch_size)]  # (B, T) each
    n_full = n_targets // block_size
    x_full = data[:n_full * block_size].view(n_full, block_size)  # (N, T)
    y_full = data[1:n_full * block_size + 1].view(n_full, block_size)  # (N, T)
    chunks = [(x_full[i:i + batch_size], y_full[i:i + batch_size]) for i in range(0, n_full, batch_size)]
    if n_targets > n_full * block_size:
        chunks.append((data[n_full * block_size:-1][None], data[n_full * block_size + 1:][None]))
    return chunks


def eval_splits(train_data: torch.Tensor, val_data: torch.Tensor, eval_tokens: int, eval_iters: int, batch_size: int,
                block_size: int) -> dict:
    """{split: (its ids, the tokens an evaluation reads of it at most; 0: all)}: val reads eval_tokens; train
    eval_iters batches' worth, no more than eval_tokens."""
    train_tokens = eval_iters * batch_size * block_size
    train_tokens = min(train_tokens, eval_tokens) if eval_tokens else train_tokens
    return {"val": (val_data, eval_tokens), "train": (train_data, train_tokens)}


def eval_batches(data: torch.Tensor, block_size: int, batch_size: int, max_tokens: int, device: torch.device):
    """split_windows' batches as token ids on device, each (eval_batch_size, block_size), with the number of targets
    in it: (x, y, n). The split's last windows (a partial batch, the shorter last window) share one batch, filled out
    after them with targets of -1, which the loss ignores: every forward pass has one shape, so a compiled model
    compiles the evaluation once. Padding after a window leaves its predictions as they were: attention is causal."""
    size = eval_batch_size(batch_size, block_size, device.type)
    last_x, last_y, n_last = [], [], 0
    for x, y in split_windows(data, block_size, size, max_tokens):
        x, y = x.to(device, torch.long), y.to(device, torch.long)  # (B, T) each; the last window may be shorter
        if x.shape == (size, block_size):
            yield x, y, y.numel()
        else:
            n_last += y.numel()
            last_x.append(F.pad(x, (0, block_size - x.size(1)), value=0))
            last_y.append(F.pad(y, (0, block_size - y.size(1)), value=IGNORED))
    if last_x:
        x, y = torch.cat(last_x), torch.cat(last_y)  # (rows, T) each
        yield (F.pad(x, (0, 0, 0, size - len(x)), value=0), F.pad(y, (0, 0, 0, size - len(y)), value=IGNORED),
               n_last)


CORRECT, TOP5, TARGETS, PREDICTED = range(4)  # the rows of prediction_counts


def prediction_counts(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(4, vocab) counts over a batch, per character: targets predicted right by the top-1 prediction (CORRECT) and
    within the top 5 (TOP5), by target; how often it is the target (TARGETS); how often it is the top-1 prediction
    (PREDICTED). What accuracies and classification_metrics need, without a vocab x vocab confusion matrix."""
    vocab_size = logits.size(-1)
    logits, targets = logits.float().reshape(-1, vocab_size), targets.reshape(-1)  # (N, V), (N,)
    counted = targets != IGNORED
    logits, targets = logits[counted], targets[counted]
    top = logits.topk(min(5, vocab_size), dim=-1).indices  # (N, 5)
    in_top5 = (top == targets[:, None]).any(dim=-1)  # (N,)
    return torch.stack([torch.bincount(targets[top[:, 0] == targets], minlength=vocab_size),
                        torch.bincount(targets[in_top5], minlength=vocab_size),
                        torch.bincount(targets, minlength=vocab_size),
                        torch.bincount(top[:, 0], minlength=vocab_size)])


def accuracies(counts: torch.Tensor) -> tuple[float, float]:
    """(top-1, top-5) accuracy from prediction_counts: the share of targets predicted right."""
    targets = counts[TARGETS].sum().item()
    return counts[CORRECT].sum().item() / targets, counts[TOP5].sum().item() / targets


def bits_per_character(loss: float, counts: torch.Tensor, token_chars: list[int]) -> float:
    """The loss in bits per character of the text the targets hold, which a character run and a BPE run (whose
    tokens hold several characters: token_chars, bpe.token_chars) share: loss, a mean in nats per target, times the
    targets per character, over ln 2. For a character run, exactly loss / ln 2."""
    targets = counts[TARGETS].double()  # (vocab_size,): how often each token is a target
    chars = float(targets @ torch.tensor(token_chars, dtype=torch.float64))
    return loss / math.log(2) * (float(targets.sum()) / chars)


def classification_metrics(counts: torch.Tensor) -> dict:
    """Macro precision, recall and F1 over characters from prediction_counts.

    Averaged over the characters that occur as targets; a character never predicted has precision 0.
    """
    counts = counts.double()
    true_positives, support, predicted = counts[CORRECT], counts[TARGETS], counts[PREDICTED]  # support: as target
    present = support > 0
    precision = torch.where(predicted > 0, true_positives / predicted.clamp(min=1), 0.0)
    recall = true_positives / support.clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    return {"precision_macro": precision[present].mean().item(), "recall_macro": recall[present].mean().item(),
            "f1_macro": f1[present].mean().item()}
