"""Starting a run from a trained one (init_from=PATH): the source checkpoint, the model's shape, the vocabulary, the
weights and the frozen layers.

    python train.py config/finetune_richard.py     # from out/finetune_richard_pretrain's best.pt, on Richard's speeches

A new run in its own out_dir starts from the source run's best weights (best.pt, else ckpt.pt; our runs or nanoGPT's),
with a fresh optimizer and schedule, on its own data_dir. The model's shape comes from the checkpoint: a shape key set
to another value is refused, one set to the same value or left out is fine. Dropout, the learning rate, the schedule
and every other setting are the new run's.

The vocabulary keeps every character's id and weights. Characters of the new data that the trained model never saw
get new ids after the old ones (in sorted order), and new rows in the token embedding and output layer, initialised
as a new model's are; the data's ids are mapped onto the model's (data.remap_ids). Resuming a run that started from
another takes its shape from its own checkpoint in the same way, since its settings never held it.
"""

from dataclasses import dataclass, replace
from pathlib import Path

import torch

import bpe
from checkpoint import checkpoint_path, load_checkpoint, model_shape
from configurator import UsageError
from model import SHAPE_KEYS

# The weights with a row per character: a grown vocabulary adds rows to them (the output layer's is the embedding's
# when tied).
VOCAB_ROWS = ("transformer.wte.weight", "lm_head.weight")


@dataclass
class Pretrained:
    """What a run takes from the trained model it starts from (or, resuming, started from), besides its shape."""
    vocab: list[str]  # the trained model's vocabulary: its ids stay the model's first ids
    started_from: dict | None  # the run record's note of the source run (None: a run that started from scratch)
    weights: dict | None  # the source's weights (memory-mapped), for a new run; None when resuming: resume() loads


def from_checkpoint(cfg, given: set):
    """(cfg with the model's shape from the checkpoint the run starts from, Pretrained), or (cfg, None) for a run
    from scratch. cfg is a TrainConfig; given holds the keys the config file or command line set."""
    if cfg.init_from == "scratch":
        return cfg, None
    if cfg.init_from == "resume":
        path = Path(cfg.out_dir) / "ckpt.pt"
        if not path.exists():
            return cfg, None  # resume() says what is missing
        ckpt = load_checkpoint(path, mmap=True)  # mmap: the tensors are not read here
        started_from = ckpt.get("started_from")
        if started_from is not None:  # its shape came from a checkpoint, not its settings: it does again
            # A shape key set to another value is left for check_resumable to refuse, as for any resume.
            cfg = replace(cfg, **{k: v for k, v in model_shape(ckpt).items() if k not in given})
        return cfg, Pretrained(bpe.from_fields(ckpt), started_from, None)
    path = source_checkpoint(cfg.init_from, None if cfg.eval_only else cfg.out_dir)  # eval_only writes nothing
    ckpt = load_checkpoint(path, mmap=True)
    shape = model_shape(ckpt)
    problems = [f"'{key}' is {getattr(cfg, key)} here, but the model in {path} has {key} {shape[key]}: a run from a "
                f"trained model keeps its shape; leave {key} out or set --{key}={shape[key]}"
                for key in SHAPE_KEYS if key in given and getattr(cfg, key) != shape[key]]
    if cfg.freeze_layers > shape["n_layer"]:
        problems.append(f"'freeze_layers' is {cfg.freeze_layers}, but the model in {path} has n_layer "
                        f"{shape['n_layer']}: set --freeze_layers={shape['n_layer']} or fewer")
    if problems:
        raise UsageError(problems)
    started_from = {"path": str(path), "iter_num": ckpt["iter_num"], "best_val_loss": ckpt["best_val_loss"]}
    return replace(cfg, **shape), Pretrained(bpe.from_fields(ckpt), started_from, ckpt["model"])


def source_checkpoint(init_from: str, out_dir: str | None) -> Path:
    """The checkpoint of the run folder init_from names: its best.pt, else ckpt.pt. out_dir: the new run's folder,
    which must be another (None: the run writes nothing)."""
    run_dir = Path(init_from)
    if not run_dir.is_dir():
        raise UsageError(f"init_from '{init_from}' is not scratch, resume or a run folder: give the out_dir of a "
                         "trained run (ours or nanoGPT's) to start from its weights")
    if out_dir is not None and run_dir.resolve() == Path(out_dir).resolve():
        raise UsageError(f"init_from '{init_from}' is this run's own out_dir, which a new run would move aside: give "
                         "the new run another --out_dir, or continue this one with --init_from=resume")
    try:
        return checkpoint_path(run_dir)
    except UsageError as e:
        raise UsageError(f"init_from: {e}") from None


def model_vocab(pretrained: Pretrained | None, data_vocab: list[str],
                freeze_layers: int) -> tuple[list[str], dict | None]:
    """The model's vocabulary (the trained model's, then the characters of the data it never saw, sorted) and the run
    record's note of the run it started from, which names the characters added. A BPE vocabulary never grows: the
    data must have the trained model's tokenizer."""
    if pretrained is None:
        return data_vocab, None
    mismatch = bpe.tokenizer_mismatch(pretrained.vocab, data_vocab)  # a BPE's tokens cannot be added one by one
    if mismatch:
        raise UsageError(f"cannot start from {pretrained.started_from['path']}: {mismatch}. Prepare the data with the "
                         "model's tokenizer (prepare_shakespeare.py --tokenizer, --vocab_size), or train from scratch")
    known = set(pretrained.vocab)
    added = sorted(ch for ch in set(data_vocab) if ch not in known)
    vocab = pretrained.vocab + added if added else pretrained.vocab
    if pretrained.weights is None:  # resuming: the vocabulary grew when the run started; check_resumable refuses more
        return vocab, pretrained.started_from
    if added and freeze_layers:
        raise UsageError(f"'freeze_layers' keeps the token embedding fixed, but the data has characters the model "
                         f"in {pretrained.started_from['path']} never saw ({' '.join(repr(c) for c in added)}), "
                         "whose new rows could then never learn: set --freeze_layers=0, or fine-tune on text without "
                         "them")
    return vocab, pretrained.started_from | {"added_characters": added}


@torch.no_grad()
def load_pretrained(model: torch.nn.Module, weights: dict) -> None:
    """Copy a trained model's weights into model, a new model of the same shape whose vocabulary may be larger: the
    rows of the old characters are copied, the new ones keep their fresh initialisation."""
    own = model.state_dict()
    merged = {}
    for name, tensor in weights.items():
        if name in VOCAB_ROWS and name in own and own[name].shape[0] > tensor.shape[0]:
            grown = own[name].clone()
            grown[:tensor.shape[0]] = tensor
            tensor = grown
        merged[name] = tensor
    model.load_state_dict(merged)  # strict: every weight of the model comes from the source but the new rows


def freeze(model: torch.nn.Module, n_layers: int) -> None:
    """Keep the token and position embeddings and the first n_layers blocks fixed (none for 0): the layers nearest
    the input hold the most general features, and fixing them limits how much the model forgets. Called before the
    optimizer is made, which then leaves them out. A tied output layer is the token embedding, and stays fixed too."""
    if n_layers <= 0:
        return
    fixed = [model.transformer.wte, *model.transformer.h[:n_layers]]
    if "wpe" in model.transformer:
        fixed.append(model.transformer.wpe)
    for module in fixed:
        module.requires_grad_(False)
