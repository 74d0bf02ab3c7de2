"""Measuring a model: the loss, accuracy and confusion counts over a whole split, the loss estimated on random batches,
and per-character precision, recall and F1.
"""

import torch
import torch.nn.functional as F

# Evaluation needs no gradients, so it takes bigger batches than training: fewer, larger matrix products, while a
# GPU's activations for them stay small. The size was measured (BENCHMARKS.md).
EVAL_TOKENS_PER_BATCH = 16384


def eval_batch_size(batch_size: int, block_size: int) -> int:
    """Windows per forward pass when evaluating a split: about EVAL_TOKENS_PER_BATCH tokens, at least a batch."""
    return max(batch_size, EVAL_TOKENS_PER_BATCH // block_size)


@torch.no_grad()
def evaluate_split(model, data: torch.Tensor, block_size: int, batch_size: int, autocast) -> dict:
    """Next-token metrics over the whole split, in non-overlapping windows of block_size.

    Returns the mean cross-entropy `loss`, top-1 and top-5 accuracy (`acc`, `top5`) and `confusion`, a
    (vocab, vocab) count of (target, top-1 prediction) pairs on the CPU. Deterministic: the same weights always give
    the same numbers. The last, shorter window covers the remainder, so every target counts once.
    """
    n_targets = len(data) - 1
    n_full = n_targets // block_size
    x_full = data[:n_full * block_size].view(n_full, block_size)  # (N, T)
    y_full = data[1:n_full * block_size + 1].view(n_full, block_size)  # (N, T)
    chunks = [(x_full[i:i + batch_size], y_full[i:i + batch_size]) for i in range(0, n_full, batch_size)]
    if n_targets > n_full * block_size:
        chunks.append((data[n_full * block_size:-1][None], data[n_full * block_size + 1:][None]))
    loss_sum = torch.zeros((), dtype=torch.float64, device=data.device)
    top5_hits = torch.zeros((), dtype=torch.long, device=data.device)
    confusion = 0
    for x, y in chunks:
        with autocast:
            logits, _ = model(x)
        vocab_size = logits.size(-1)
        logits = logits.float().view(-1, vocab_size)  # (B*T, V)
        y = y.reshape(-1)  # (B*T,)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        top = logits.topk(min(5, vocab_size), dim=-1).indices  # (B*T, 5)
        top5_hits += (top == y[:, None]).any(dim=-1).sum()
        confusion = confusion + torch.bincount(y * vocab_size + top[:, 0], minlength=vocab_size * vocab_size)
    confusion = confusion.view(vocab_size, vocab_size).cpu()
    return {"loss": (loss_sum / n_targets).item(), "acc": confusion.diagonal().sum().item() / n_targets,
            "top5": top5_hits.item() / n_targets, "confusion": confusion}


@torch.no_grad()
def estimate_loss(model, batches, autocast) -> float:
    """The mean loss over the (x, y) batches given."""
    losses = []
    for x, y in batches:
        with autocast:
            _, loss = model(x, y)
        losses.append(loss.float().clone())  # a copy: under CUDA graphs the next call reuses the output's memory
    return torch.stack(losses).mean().item()


def classification_metrics(confusion: torch.Tensor) -> dict:
    """Macro precision, recall and F1 over characters from a (target, prediction) count matrix.

    Averaged over the characters that occur as targets; a character never predicted has precision 0.
    """
    confusion = confusion.double()
    true_positives = confusion.diagonal()
    support = confusion.sum(dim=1)  # how often each character is the target
    predicted = confusion.sum(dim=0)  # how often each character is predicted
    present = support > 0
    precision = torch.where(predicted > 0, true_positives / predicted.clamp(min=1), 0.0)
    recall = true_positives / support.clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    return {"precision_macro": precision[present].mean().item(), "recall_macro": recall[present].mean().item(),
            "f1_macro": f1[present].mean().item()}
