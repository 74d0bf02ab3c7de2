"""See inside a trained run: what each head attends to, what temperature does, what each token of context and each
layer buys, how the model places tokens and positions, and the text it wrote as it learnt, in pictures with the
numbers behind them. A token is a character, or a BPE run's subword token (bpe.py), shown as its text.

    python explain.py --out_dir=out/cpu --start="ROMEO:"     # writes out/cpu/explain/explain.md and its pictures

It loads a run's best.pt (else ckpt.pt; nanoGPT's too, as sample.py does) and writes into --output (default
<out_dir>/explain/) explain.md, which shows each picture with what to look for, explain.json with the same numbers
(context_loss, layer_loss, heads, next_char, samples, ...), and the PNGs. The val loss figures are over the run's own
evaluation windows (evaluate.py): the same tokens every evaluation of the run read. docs/explain.md says how to read
each picture. For a BPE run the report says "token" where a character run's says "character", its positions are
token positions, and explain.json keeps its keys, with each token as its decoded text.
"""

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import bpe
from checkpoint import load_model
from configurator import UsageError, build_config, parse_args, refuse_positional, run_command
from data import decode, encode, load_data, remap_ids
from devices import resolve_device
from evaluate import IGNORED, eval_batches
from files import ensure_dir, write_atomic, write_json
from sample import find_latest_run, read_prompt
from runlog import read_metrics, samples_over_training
from tables import markdown_table, text_over_training

TEMPERATURES = (0.5, 0.8, 1.0, 1.5)  # sample.py's default 0.8, and either side of it
SHOWN_CHARACTERS = 12  # the likeliest tokens drawn for the next token, and the confusion matrix's size
LABELLED_TOKENS = 100  # a larger vocabulary's embedding picture labels only its most frequent tokens (val targets)
ROLE_SHARE = 1 / 3  # a head "mostly looks at" a place it gives more than this share of its attention, on average


@dataclass
class ExplainConfig:
    out_dir: str = ""  # the run to explain; empty: the most recently updated run under out/
    start: str = "ROMEO:\nWhat light through yonder window breaks?"  # the prompt, or FILE:path
    output: str = ""  # the folder for explain.md, explain.json and the pictures; empty: <out_dir>/explain
    data_dir: str = ""  # the data whose val split is measured; empty: the run's own
    eval_tokens: int = -1  # val tokens read at most, in the evaluation's fixed windows; -1: the run's; 0: all
    top_k: int = 10  # the cut drawn on the next token's probabilities (sample.py's --top_k)
    device: str = "auto"  # auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps


# ----------------------------------------------------------------------------------------------------------------------
# Tokens as a reader sees them

def noun(vocab: list[str]) -> str:
    """What the report calls one of the run's tokens: "character", or "token" for a BPE run's subword tokens."""
    return "token" if isinstance(vocab, bpe.Vocabulary) else "character"


def token_texts(vocab: list[str]) -> list[str]:
    """Each token's text, id -> str: a character run's characters; a BPE run's tokens decoded from GPT-2's byte
    alphabet (" the", not "Ġthe"; a token that holds part of a character only shows U+FFFD)."""
    if not isinstance(vocab, bpe.Vocabulary):
        return list(vocab)
    return [bpe.decode([i], vocab) for i in range(len(vocab))]


def prompt_ids(prompt: str, vocab: list[str], block: int) -> tuple[list[int], str, str]:
    """(ids, text, note) of the prompt as the model reads it: a prompt of more than block tokens cut to its last
    block, the text those hold, and the report's note on it. A character run refuses characters outside its
    vocabulary (data.encode); a BPE run encodes any text."""
    ids, unit = encode(prompt, vocab), noun(vocab)
    note = f"{len(ids)} {unit}s" + (f" ({len(prompt)} characters)" if unit == "token" else "")
    if len(ids) > block:
        ids, note = ids[-block:], f"its last {block} {unit}s (block_size) of {len(ids)}"
        prompt = decode(ids, vocab)
    return ids, prompt, note


def characters_per_token(confusion: torch.Tensor, vocab: list[str]) -> float:
    """How many characters a val target token holds on average (bpe.token_chars): 1 for a character run."""
    support = confusion.sum(1).double()
    return round(float(support @ torch.tensor(bpe.token_chars(vocab), dtype=torch.float64) / support.sum()), 4)


def by_frequency(confusion: torch.Tensor) -> list[int]:
    """The ids of the tokens that occur as targets in confusion (V, V), most frequent first."""
    support = confusion.sum(1)
    return [c for c in support.double().argsort(descending=True).tolist() if support[c] > 0]


# ----------------------------------------------------------------------------------------------------------------------
# Inside one forward pass

@torch.no_grad()
def trace(model, idx: torch.Tensor) -> dict:
    """One forward pass of idx (B, T) that also keeps every layer's attention weights (B, nh, T, T), computed by
    the attention module itself from its input, and the residual stream after the embeddings and after each block
    (B, T, C): forward hooks, so the model runs its own code."""
    attention, streams, hooks = [], [], []
    hooks.append(model.transformer.drop.register_forward_hook(lambda m, args, out: streams.append(out)))
    for block in model.transformer.h:
        hooks.append(block.attn.register_forward_pre_hook(
            lambda m, args: attention.append(m.attention_weights(args[0], args[3]))))
        hooks.append(block.register_forward_hook(lambda m, args, out: streams.append(out)))
    try:
        logits, _ = model(idx)
    finally:
        for hook in hooks:
            hook.remove()
    return {"logits": logits, "attention": attention, "streams": streams}


def lens_logits(model, stream: torch.Tensor) -> torch.Tensor:
    """The logits the model would give if its residual stream ended here: the final norm and the output layer."""
    return model.lm_head(model.transformer.ln_f(stream))


def head_stats(weights: torch.Tensor, prompt) -> list[dict]:
    """Per head of one layer's weights (nh, T, T) over the prompt (its T tokens' texts: a str, for characters): the
    mean distance it looks back, the entropy of its weights (in nats: 0 looks at one position, ln(i + 1) spreads
    evenly), and the share it gives the previous token, the same token and the start of the line (the last token
    before it that holds a newline; on the prompt's first line, its first token), averaged over the positions that
    have each. The first position is left out where there are others: it has only itself to look at. Distance and
    entropy grow with the prompt's length: compare heads on prompts of one length."""
    nh, T, _ = weights.shape
    i = torch.arange(T)
    rows = i[1:] if T > 1 else i  # the positions with a choice
    distance = (weights * (i[:, None] - i[None, :]).clamp(min=0)).sum(-1)[:, rows].mean(-1)  # (nh,)
    entropy = -(weights * weights.clamp(min=1e-12).log()).sum(-1)[:, rows].mean(-1)  # (nh,)
    newlines = [p for p in range(T) if "\n" in prompt[p]]  # the positions whose token holds a newline
    line_start = torch.tensor([max([q for q in newlines if q < p], default=0) for p in range(T)])  # each one's start
    previous = weights[:, i[1:], i[1:] - 1].mean(-1) if T > 1 else torch.zeros(nh)
    same = weights[:, rows, rows].mean(-1)
    starts = i[line_start < i]  # positions whose line began earlier
    start = weights[:, starts, line_start[starts]].mean(-1) if len(starts) else torch.zeros(nh)
    return [{"head": h, "mean_distance": round(distance[h].item(), 3), "entropy": round(entropy[h].item(), 3),
             "previous": round(previous[h].item(), 3), "same": round(same[h].item(), 3),
             "line_start": round(start[h].item(), 3)} for h in range(nh)]


def role(head: dict, unit: str = "character") -> str:
    """What a head mostly looks at, from head_stats: the previous token (unit: what a token is called), the same one,
    the line's start."""
    shares = {f"previous {unit}": head["previous"], f"same {unit}": head["same"],
              "start of the line": head["line_start"]}
    name, share = max(shares.items(), key=lambda kv: kv[1])
    return name if share > ROLE_SHARE else "spread out"


def next_char(logits: torch.Tensor, vocab: list[str], top_k: int) -> dict:
    """At one position's logits (V,): for each temperature T, softmax(logits / T), its entropy and the likeliest
    tokens (their texts from vocab, id -> text: token_texts); and the share of the probability that sample.py's
    top_k keeps."""
    logits = logits.float()
    order = logits.argsort(descending=True)[:SHOWN_CHARACTERS].tolist()
    result = {"characters": [vocab[i] for i in order], "top_k": top_k, "temperatures": {}}
    for temperature in TEMPERATURES:
        probs = (logits / temperature).softmax(-1)
        result["temperatures"][str(temperature)] = {
            "probabilities": [round(probs[i].item(), 6) for i in order],
            "entropy": round(-(probs * probs.clamp(min=1e-12).log()).sum().item(), 4),
            "kept_by_top_k": round(probs.topk(min(top_k, len(vocab))).values.sum().item(), 4) if top_k else 1.0}
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Over the val split's evaluation windows

@torch.no_grad()
def val_measures(model, val_ids: torch.Tensor, max_tokens: int, batch_size: int) -> dict:
    """Over the evaluation's windows of the val split (evaluate.eval_batches, as train.py reads them): the mean loss
    at each position of the window (context_loss), the loss and top-1 accuracy of the lens after the embeddings and
    after each block (layer_loss, layer_acc; the last is the model's own), and the top-1 confusion counts (V, V)."""
    block, V = model.config.block_size, model.config.vocab_size
    device = next(model.parameters()).device
    n_layers = model.config.n_layer + 1
    position_sum, position_count = torch.zeros(block, dtype=torch.float64), torch.zeros(block, dtype=torch.float64)
    layer_sum, layer_right = torch.zeros(n_layers, dtype=torch.float64), torch.zeros(n_layers, dtype=torch.float64)
    confusion, tokens = torch.zeros(V, V, dtype=torch.long), 0
    for x, y, n in eval_batches(val_ids, block, batch_size, max_tokens, device):  # (B, T) each
        counted = (y != IGNORED).cpu()
        for layer, stream in enumerate(trace(model, x)["streams"]):
            logits = lens_logits(model, stream).float()  # (B, T, V)
            losses = F.cross_entropy(logits.transpose(1, 2), y.clamp(min=0), reduction="none").cpu()  # (B, T)
            predicted = logits.argmax(-1).cpu()
            layer_sum[layer] += losses[counted].double().sum()
            layer_right[layer] += (predicted == y.cpu())[counted].sum()
        position_sum += (losses * counted).double().sum(0)
        position_count += counted.double().sum(0)
        confusion += torch.bincount(y.cpu()[counted] * V + predicted[counted], minlength=V * V).view(V, V)
        tokens += n
    return {"context_loss": (position_sum / position_count.clamp(min=1)).tolist(),
            "context_count": position_count.long().tolist(), "layer_loss": (layer_sum / tokens).tolist(),
            "layer_acc": (layer_right / tokens).tolist(), "confusion": confusion, "tokens": tokens}


def per_character(confusion: torch.Tensor, vocab: list[str]) -> list[dict]:
    """Precision, recall and F1 of each token that occurs as a target, most frequent first, under the key
    "character" (its text from vocab, id -> text: token_texts), whatever the run's tokens are."""
    right = confusion.diag().double()
    support, predicted = confusion.sum(1).double(), confusion.sum(0).double()
    rows = []
    for c in by_frequency(confusion):
        precision = (right[c] / predicted[c]).item() if predicted[c] else 0.0
        recall = (right[c] / support[c]).item()
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"character": vocab[c], "count": int(support[c]), "precision": round(precision, 4),
                     "recall": round(recall, 4), "f1": round(f1, 4)})
    return rows


def embedding_plane(model) -> tuple[torch.Tensor, list[float]]:
    """The token embeddings (V, C) on their two leading principal directions (V, 2), and the share of the
    embeddings' variance each direction holds."""
    w = model.transformer.wte.weight.detach().float().cpu()
    centred = w - w.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    variance = (s ** 2) / (s ** 2).sum()
    return centred @ vh[:2].T, [round(v, 4) for v in variance[:2].tolist()]


def position_similarity(model) -> tuple[torch.Tensor, str]:
    """(block, block) cosine similarity between what positions i and j add, and what it is of: the learned or
    sinusoidal position embeddings, or for rotary positions the mean cosine of the angle a query and a key at i
    and j meet at (it depends on i - j only)."""
    kind = model.config.position_encoding
    if kind == "rope":
        angles = torch.atan2(model.rope_sin, model.rope_cos).float().cpu()  # (block, hs/2)
        return (torch.cos(angles[:, None, :] - angles[None, :, :]).mean(-1),
                "rotary positions: the mean cosine of the angles by which positions i and j turn a query and a key")
    table = model.transformer.wpe.weight if kind == "learned" else model.wpe_sinusoidal
    table = F.normalize(table.detach().float().cpu(), dim=-1)
    return table @ table.T, f"{kind} position embeddings: the cosine similarity of positions i and j"


# ----------------------------------------------------------------------------------------------------------------------
# The pictures

def figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout="constrained")


def save(fig, path: Path) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    return path.name


def shown(text: str) -> str:
    """A token's text (a character, or a BPE token's characters) as a label: whitespace made visible."""
    return "".join({"\n": "\\n", " ": "␣", "\t": "\\t"}.get(ch, ch) for ch in text)


def label(text: str) -> str:
    """A token's text as a picture's label: shown, with "$" escaped, which matplotlib would read as mathematics
    where a label holds two (a BPE token may); it draws the escaped one as "$" itself."""
    return shown(text).replace("$", "\\$")


def upright(labels: list[str]) -> dict:
    """The tick options for labels along an x axis: turned upright where one is longer than a character's (a BPE
    token's), so that they do not overlap; none otherwise."""
    return {"rotation": 90} if max(map(len, labels), default=0) > 2 else {}


def draw_attention(maps: list[torch.Tensor], prompt, path: Path) -> str:
    """Each head's weights; prompt: the T tokens' texts (a str, for characters), the labels of both axes."""
    n_layer, n_head = len(maps), maps[0].size(0)
    fig = figure(2.2 * n_head + 1, 2.2 * n_layer + 0.5)
    labels = [label(c) for c in prompt]
    step = math.ceil(len(prompt) / 24)  # at most 24 labels an axis
    for layer, weights in enumerate(maps):
        for head in range(n_head):
            ax = fig.add_subplot(n_layer, n_head, layer * n_head + head + 1)
            ax.imshow(weights[head].numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            ticks = list(range(0, len(prompt), step))
            ax.set_xticks(ticks, [labels[t] for t in ticks], fontsize=6, **upright(labels))
            ax.set_yticks(ticks, [labels[t] for t in ticks], fontsize=6)
    fig.suptitle("attention: row = the position attending, column = the position attended to", fontsize=10)
    return save(fig, path)


def draw_next_char(result: dict, path: Path, unit: str = "character") -> str:
    fig = figure(8, 3.5)
    ax = fig.add_subplot()
    chars, width = result["characters"], 0.8 / len(TEMPERATURES)
    for k, (temperature, at) in enumerate(result["temperatures"].items()):
        ax.bar([i + k * width for i in range(len(chars))], at["probabilities"], width,
               label=f"T = {temperature} (entropy {at['entropy']:.2f} nats)")
    if 0 < result["top_k"] < len(chars):
        ax.axvline(result["top_k"] - 0.1, color="black", linestyle="--", label=f"top_k = {result['top_k']} keeps these")
    labels = [label(c) for c in chars]
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(chars))], labels, **upright(labels))
    ax.set_ylabel(f"probability of the next {unit}")
    ax.legend(fontsize="small")
    return save(fig, path)


def smoothed(values: list[float]) -> list[float]:
    """A centred running mean over up to a 32nd of the curve: each position of a window is measured on a few hundred
    targets only, so neighbours average out the noise. Near the start, where the loss falls fastest, the window
    narrows to the positions either side that exist, down to the first position alone."""
    width = len(values) // 64
    means = []
    for i in range(len(values)):
        half = min(width, i, len(values) - 1 - i)
        means.append(sum(values[i - half:i + half + 1]) / (2 * half + 1))
    return means


def context_axes(ax, title: str, unit: str = "character") -> None:
    """The axes of a context curve: the context length in tokens (unit: what a token is called) on a log scale,
    labelled 1, 2, 4, ... rather than powers of two, against the mean val loss."""
    from matplotlib.ticker import StrMethodFormatter
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:.0f}"))
    ax.set_xlabel(f"{unit}s of context (position in the window)")
    ax.set_ylabel("mean val loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def draw_context(values: list[float], path: Path, unit: str = "character") -> str:
    """One run's context curve: as measured and, for a long window, its running mean; log scale of context."""
    fig = figure(7, 3.5)
    ax = fig.add_subplot()
    xs = range(1, len(values) + 1)
    long = len(values) >= 64
    ax.plot(xs, values, marker=None if long else ".", alpha=0.4 if long else 1.0, label="measured")
    if long:
        ax.plot(xs, smoothed(values), label=f"running mean of up to {2 * (len(values) // 64) + 1}")
    context_axes(ax, f"what each {unit} of context is worth", unit)
    return save(fig, path)


def draw_layers(losses: list[float], accuracies: list[float], path: Path) -> str:
    """The lens's val loss (log scale: the embeddings' is far above the rest) and top-1 accuracy after each layer."""
    fig = figure(7, 3.5)
    ax = fig.add_subplot()
    names = ["embeddings", *[f"block {i}" for i in range(len(losses) - 1)]]
    ax.plot(names, losses, marker="o", label="val loss")
    ax.set_yscale("log")
    ax.set_ylabel("val loss (log scale)")
    ax.set_xlabel("the residual stream after ...")
    right = ax.twinx()
    right.plot(names, accuracies, marker="s", color="tab:orange", label="top-1 accuracy")
    right.set_ylabel("top-1 accuracy")
    right.set_ylim(0, 1)
    ax.set_title("layer by layer: predicting from the residual stream")
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize="small")
    return save(fig, path)


def draw_context_curves(curves: dict[str, list[float]], path: Path, unit: str = "character") -> str:
    """Several runs' context curves in one picture, each as its running mean, on a log scale of context length:
    most of what context gives, it gives in the first few characters. unit: what a position's token is called."""
    fig = figure(7, 3.8)
    ax = fig.add_subplot()
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), smoothed(values) if len(values) >= 64 else values, label=name)
    context_axes(ax, f"what each {unit} of context is worth, per run", unit)
    return save(fig, path)


def draw_embeddings(plane: torch.Tensor, variance: list[float], vocab: list[str], path: Path,
                    labelled: list[int] | None = None) -> str:
    """Every token's point; the labels (vocab: id -> text) of the ids in labelled, or of all of them (None)."""
    fig = figure(6, 6)
    ax = fig.add_subplot()
    ax.scatter(plane[:, 0], plane[:, 1], s=4, alpha=0.3)
    points = plane.tolist()
    for i in range(len(vocab)) if labelled is None else labelled:
        ax.annotate(label(vocab[i]), tuple(points[i]), fontsize=8, ha="center", va="center")
    ax.set_xlabel(f"first principal direction ({variance[0]:.0%} of the variance)")
    ax.set_ylabel(f"second ({variance[1]:.0%})")
    ax.set_title("token embeddings, projected to 2-D" if labelled is None else
                 f"token embeddings, projected to 2-D\n(labelled: the {len(labelled)} most frequent)")
    return save(fig, path)


def draw_matrix(matrix: torch.Tensor, labels: list[str], title: str, path: Path, vmin=0.0, vmax=1.0) -> str:
    fig = figure(6, 5)
    ax = fig.add_subplot()
    image = ax.imshow(matrix.numpy(), cmap="viridis", vmin=vmin, vmax=vmax)
    fig.colorbar(image, ax=ax)
    if labels:
        ax.set_xticks(range(len(labels)), labels, **upright(labels))
        ax.set_yticks(range(len(labels)), labels)
    ax.set_title(textwrap.fill(title, 60), fontsize=10)
    return save(fig, path)


# ----------------------------------------------------------------------------------------------------------------------
# The report

def report(run: dict, prompt_note: str, heads: list[list[dict]], nxt: dict, val: dict, chars: list[dict],
           variance: list[float], positions_kind: str, pictures: dict, samples: list[tuple[int, str]],
           unit: str = "character", per_token: float | None = None, labelled: int | None = None) -> str:
    """explain.md: each picture, what to look for in it, and the numbers it is drawn from. unit: what a token is
    called ("character", or "token" for a BPE run, whose val tokens hold per_token characters on average); labelled:
    how many tokens the embedding picture labels, where it does not label all of them."""
    u = unit
    parts = [f"# Inside {run['path']}", "", f"iter {run['iter_num']}, best val loss {run['best_val_loss']:.4f}. "
             f"The prompt: {prompt_note}. The val figures are over {val['tokens']:,} val tokens, the run's own "
             "evaluation windows.", "", "## 1. Attention", "", f"![attention]({pictures['attention']})", "",
             f"Each square is one head: row i is the {u} attending, column j the one it takes from (only j <= i:"
             " a GPT cannot look ahead). A bright line just below the diagonal is a head that reads the previous "
             f"{u}; a bright diagonal, the {u} itself; a bright column at each newline, the line's start. "
             "The table gives each head's mean distance back and entropy over this prompt, and the shares of its "
             f"attention on the previous {u}, the same one and the line's start "
             f"(a head 'mostly looks at' one it gives more than {ROLE_SHARE:.0%}). Distances and entropies grow with "
             "the prompt's length: compare heads on prompts of one length.", ""]
    rows = [[layer, h["head"], h["mean_distance"], h["entropy"], h["previous"], h["same"], h["line_start"],
             role(h, u)] for layer, layer_heads in enumerate(heads) for h in layer_heads]
    parts += [markdown_table(["layer", "head", "mean distance", "entropy (nats)", "previous", "same", "line start",
                              "mostly looks at"], rows), "", f"## 2. The next {u}", "",
              f"![next {u}]({pictures['next_char']})", "",
              f"The model's probabilities for the {u} after the prompt, at the temperatures sample.py can use: "
              f"below 1 the likeliest {u}s take more of the probability (lower entropy, more predictable "
              "text), above 1 the rest catch up (more surprising text). top_k keeps only the k likeliest.", ""]
    parts += [markdown_table(["temperature", "entropy (nats)", f"kept by top_k={nxt['top_k']}",
                              *[f"`{shown(c)}`" for c in nxt["characters"][:6]]],
                             [[t, at["entropy"], at["kept_by_top_k"], *at["probabilities"][:6]]
                              for t, at in nxt["temperatures"].items()]), ""]
    context = val["context_loss"]
    level = sum(context[len(context) // 2:]) / len(context[len(context) // 2:])  # the second half's mean
    settled = next(p for p, loss in enumerate(smoothed(context), start=1) if loss <= level + 0.02)
    positions = "" if per_token is None else (
        f" Positions are token positions: a val token holds {per_token:.2f} characters on average, so the "
        f"{len(context)}-token window holds about {len(context) * per_token:.0f} characters.")
    parts += ["## 3. Context", "", f"![context]({pictures['context']})", "",
              f"The mean val loss at each position of the window: with 1 {u} of context, 2, ... up to "
              f"block_size: what each extra {u} is worth. With 1 {u}: {context[0]:.4f}; with "
              f"{min(8, len(context))}: {context[min(7, len(context) - 1)]:.4f}; with {len(context)}: "
              f"{context[-1]:.4f}. From about {settled} {u}s on, its running mean is within 0.02 of the "
              f"second half's mean ({level:.4f}): past there, more context no longer pays, for this model."
              + positions, ""]
    vocab_size = val["confusion"].size(0)
    layer_rows = [["embeddings" if i == 0 else f"after block {i - 1}", f"{loss:.4f}", f"{acc:.1%}"]
                  for i, (loss, acc) in enumerate(zip(val["layer_loss"], val["layer_acc"]))]
    parts += ["## 4. Layer by layer", "", f"![layers]({pictures['layers']})", "",
              "The loss and accuracy the model would have if it stopped after the embeddings, or after each block, "
              "and predicted from there (its final norm and output layer applied): what each layer adds. The last "
              f"row is the model itself. From the embeddings alone it knows only the current {u}, and an "
              "output layer trained to read the last block's stream reads this one poorly: a loss above a uniform "
              f"guess's (ln {vocab_size} = {math.log(vocab_size):.2f}) is "
              "usual there.", "", markdown_table(["residual stream", "val loss", "top-1 accuracy"],
                                                              layer_rows), ""]
    parts += tokens_section(chars, variance, pictures, u, labelled)
    parts += ["## 6. Positions", "", f"![positions]({pictures['positions']})", "",
              f"The picture: {positions_kind}. Learned positions are whatever training found useful: "
              "neighbours usually end up alike. Sinusoidal and rotary ones are fixed patterns that depend on the "
              "distance alone, so they say the same for every run.", ""]
    return "\n".join(parts + over_training(samples))


def tokens_section(chars: list[dict], variance: list[float], pictures: dict, unit: str,
                   labelled: int | None) -> list[str]:
    """Section 5: the embeddings, the confusion matrix and each frequent token's precision, recall and F1."""
    u = unit
    alike = " (vowels, capitals, punctuation)" if u == "character" else ""
    only = "" if labelled is None else f" Only the {labelled} most frequent in the val split are labelled."
    return [f"## 5. {u.capitalize()}s", "", f"![embeddings]({pictures['embeddings']})", "",
            f"Each {u}'s embedding on its two leading principal directions ({variance[0]:.0%} and "
            f"{variance[1]:.0%} of the variance): {u}s the model treats alike sit together{alike}.{only}", "",
            f"![confusion]({pictures['confusion']})", "",
            f"Row: the {u} that came; column: the one predicted first (the most frequent {u}s, each "
            "row as shares).", "", markdown_table([u, "count", "precision", "recall", "F1"],
                                                 [[f"`{shown(c['character'])}`", c["count"], c["precision"],
                                                   c["recall"], c["f1"]] for c in chars[:SHOWN_CHARACTERS]]), ""]


def over_training(samples: list[tuple[int, str]]) -> list[str]:
    """Section 7: the text the run wrote at its evaluations (runlog.samples_over_training)."""
    if not samples:
        return ["## 7. Text over training", "", "This run wrote no text at its evaluations: a nanoGPT run, a run "
                "from before train.py's eval_sample_chars, or one with eval_sample_chars=0.", ""]
    return ["## 7. Text over training", "", "What the model wrote at its run's evaluations 0, 1, 2, 4, 8, ... and "
            "the last, from a new line with the same seed every time (train.py's eval_sample_chars): the text "
            "grows from noise into words as it learns.", "", *text_over_training(samples)]


def validate(cfg: ExplainConfig) -> None:
    problems = []
    if cfg.top_k < 0:
        problems.append(f"'top_k' must be >= 0 (0 = no cut), got {cfg.top_k}")
    if cfg.eval_tokens < -1:
        problems.append(f"'eval_tokens' must be >= 0, or -1 for the run's own; got {cfg.eval_tokens}")
    if problems:
        raise UsageError(problems)


def run_val_measures(model, vocab: list[str], settings: dict, data_dir: str = "", eval_tokens: int = -1) -> dict:
    """val_measures over a run's val split (settings: its train_config, {} for nanoGPT's), read as its evaluations
    read it: its data_dir, eval_tokens and batch_size unless data_dir or eval_tokens (>= 0) say otherwise."""
    data_dir = data_dir or settings.get("data_dir", "data/shakespeare_char")
    data_vocab, _, val_ids, _ = load_data(data_dir, "cpu", model.config.block_size)
    mismatch = bpe.tokenizer_mismatch(vocab, data_vocab)
    if mismatch:
        raise UsageError(f"{data_dir}: {mismatch}; give --data_dir the data it was trained on")
    unknown = sorted(set(data_vocab) - set(vocab))
    if unknown:
        raise UsageError(f"{data_dir} has characters the model never saw ({' '.join(map(repr, unknown[:10]))}): "
                         "give --data_dir the data it was trained on")
    max_tokens = eval_tokens if eval_tokens >= 0 else settings.get("eval_tokens", 120_000)
    return val_measures(model, remap_ids(val_ids, data_vocab, vocab), max_tokens, settings.get("batch_size", 64))


def explain(argv=None) -> dict:
    positional, options = parse_args(argv)
    refuse_positional(positional)
    cfg = build_config(ExplainConfig, None, options)
    validate(cfg)
    device = resolve_device(cfg.device)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else find_latest_run()
    model, vocab, run = load_model(out_dir, device)
    # refuses a character run's unknown characters before anything is written
    ids, prompt, note = prompt_ids(read_prompt(cfg.start), vocab, model.config.block_size)
    texts, unit = token_texts(vocab), noun(vocab)  # what a reader sees of each token, and what a token is called
    pieces = [texts[i] for i in ids]  # the text of each of the prompt's positions
    traced = trace(model, torch.tensor([ids], device=device))  # (1, T)
    maps = [weights[0].cpu() for weights in traced["attention"]]  # (nh, T, T) per layer
    heads = [head_stats(weights, pieces) for weights in maps]
    nxt = next_char(traced["logits"][0, -1], texts, cfg.top_k)
    val = run_val_measures(model, vocab, run["train_config"], cfg.data_dir, cfg.eval_tokens)
    chars = per_character(val["confusion"], texts)
    plane, variance = embedding_plane(model)
    similarity, positions_kind = position_similarity(model)
    samples = samples_over_training(read_metrics(out_dir)) if (out_dir / "metrics.jsonl").is_file() else []

    output = Path(cfg.output) if cfg.output else out_dir / "explain"
    ensure_dir(output, key="output")
    frequent = by_frequency(val["confusion"])
    labelled = frequent[:LABELLED_TOKENS] if len(vocab) > LABELLED_TOKENS else None  # None: every token
    shown_ids = frequent[:SHOWN_CHARACTERS]
    confusion = val["confusion"][shown_ids][:, shown_ids].double()
    pictures = {
        "attention": draw_attention(maps, pieces, output / "attention.png"),
        "next_char": draw_next_char(nxt, output / "next_char.png", unit),
        "context": draw_context(val["context_loss"], output / "context.png", unit),
        "layers": draw_layers(val["layer_loss"], val["layer_acc"], output / "layers.png"),
        "embeddings": draw_embeddings(plane, variance, texts, output / "embeddings.png", labelled),
        "confusion": draw_matrix(confusion / confusion.sum(1, keepdim=True).clamp(min=1),
                                 [label(texts[c]) for c in shown_ids], "val confusion (row shares)",
                                 output / "confusion.png"),
        "positions": draw_matrix(similarity, [], positions_kind, output / "positions.png", vmin=-1.0),
    }
    numbers = {"run": run["path"], "iter_num": run["iter_num"], "prompt": prompt, "val_tokens": val["tokens"],
               "context_loss": val["context_loss"], "context_count": val["context_count"],
               "layer_loss": val["layer_loss"], "layer_acc": val["layer_acc"], "heads": heads, "next_char": nxt,
               "characters": chars, "embedding_variance": variance, "samples": samples, "pictures": pictures}
    per_token = characters_per_token(val["confusion"], vocab) if unit == "token" else None
    if unit == "token":  # a BPE run's: what each position of the prompt holds, and what a val token holds
        numbers |= {"prompt_tokens": pieces, "characters_per_token": per_token}
    write_json(output / "explain.json", numbers)
    write_atomic(output / "explain.md", report(run, note, heads, nxt, val, chars, variance, positions_kind, pictures,
                                               samples, unit, per_token, None if labelled is None else len(labelled)))
    print(f"wrote {output / 'explain.md'}, explain.json and {len(pictures)} pictures")
    return numbers


def main(argv=None):
    return run_command(explain, argv, __doc__, ExplainConfig)


if __name__ == "__main__":
    main()
