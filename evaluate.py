"""Measuring a model: the loss, accuracy and per-character counts over a split (the whole of it, or a fixed sample of
windows when it is large), and per-character precision, recall and F1.
"""

import torch
import torch.nn.functional as F

# Evaluation needs no gradients, so on a GPU it takes bigger batches than training: fewer, larger matrix products,
# while the activations for them stay small. On a CPU the training batch is faster: it stays in the caches
# (BENCHMARKS.md, "CPU: evaluation batch").
EVAL_TOKENS_PER_BATCH = 16384


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


def describe_reads(val_data, train_data, block_size: int, val_tokens: int, train_tokens: int) -> str:
    """The line a run prints at its start: how many tokens of each split an evaluation reads."""
    counts = [eval_token_count(len(split) - 1, block_size, cap)
              for split, cap in ((val_data, val_tokens), (train_data, train_tokens))]
    return (f"each evaluation reads {counts[0]:,} of {len(val_data) - 1:,} val tokens and {counts[1]:,} of "
            f"{len(train_data) - 1:,} train tokens")


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


@torch.no_grad()
def evaluate_split(model, data: torch.Tensor, block_size: int, batch_size: int, autocast, max_tokens: int = 0,
                   device=None) -> dict:
    """Next-token metrics over the split, or over max_tokens of it in fixed windows (split_windows), computed on
    device (the data's by default).

    Returns the mean cross-entropy `loss`, top-1 and top-5 accuracy (`acc`, `top5`), `char_counts`, a (3, vocab)
    count per character of correct top-1 predictions, of targets and of top-1 predictions (on the CPU: what
    classification_metrics needs, without a vocab x vocab matrix), and `tokens`, the number of targets they are
    over. Deterministic: the same weights always give the same numbers."""
    device = data.device if device is None else device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top5_hits = torch.zeros((), dtype=torch.long, device=device)
    char_counts, n_targets = 0, 0
    for x, y in split_windows(data, block_size, batch_size, max_tokens):
        x, y = x.to(device, torch.long), y.to(device, torch.long)
        with autocast:
            logits, _ = model(x)
        vocab_size = logits.size(-1)
        logits = logits.float().view(-1, vocab_size)  # (B*T, V)
        y = y.reshape(-1)  # (B*T,)
        n_targets += len(y)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        top = logits.topk(min(5, vocab_size), dim=-1).indices  # (B*T, 5)
        top5_hits += (top == y[:, None]).any(dim=-1).sum()
        char_counts = char_counts + torch.stack([torch.bincount(y[top[:, 0] == y], minlength=vocab_size),
                                                 torch.bincount(y, minlength=vocab_size),
                                                 torch.bincount(top[:, 0], minlength=vocab_size)])  # (3, V)
    char_counts = char_counts.cpu()
    return {"loss": (loss_sum / n_targets).item(), "acc": char_counts[0].sum().item() / n_targets,
            "top5": top5_hits.item() / n_targets, "char_counts": char_counts, "tokens": n_targets}


def classification_metrics(char_counts: torch.Tensor) -> dict:
    """Macro precision, recall and F1 over characters from evaluate_split's char_counts (per character: correct top-1
    predictions, targets, top-1 predictions).

    Averaged over the characters that occur as targets; a character never predicted has precision 0.
    """
    true_positives, support, predicted = char_counts.double()  # support: how often each character is the target
    present = support > 0
    precision = torch.where(predicted > 0, true_positives / predicted.clamp(min=1), 0.0)
    recall = true_positives / support.clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    return {"precision_macro": precision[present].mean().item(), "recall_macro": recall[present].mean().item(),
            "f1_macro": f1[present].mean().item()}
