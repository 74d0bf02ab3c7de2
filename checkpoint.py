"""Checkpoints: what ckpt.pt and best.pt hold, writing them so that a crash cannot damage them, loading them safely,
resuming a run from one, and reading nanoGPT's checkpoints.

A checkpoint describes itself: its format version, the model's config and vocabulary (enough to rebuild and sample
from the model), the run's config, the data it was trained on, and the run's state (RunState). ckpt.pt adds what
resuming needs: the optimizer, the grad scaler and every random-number generator's state. Everything is tensors and
plain data, so it loads with torch.load(..., weights_only=True), which runs no code from the file.
"""

import math
import pickle
import random
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

import bpe
from configurator import UsageError
from files import WriteError, megabytes, write_atomic
from model import GPT, SHAPE_KEYS, GPTConfig

CHECKPOINT_FORMAT_VERSION = 1


@dataclass
class RunState:
    """Where a run stands: what a checkpoint saves besides weights, optimizer and random-number states."""
    iter_num: int = 0  # optimizer steps taken
    best_val_loss: float = float("inf")  # the lowest val loss so far
    best_iter: int | None = None  # the iteration it was measured at
    evals_since_best: int = 0  # evaluations since then, for early stopping
    tokens_seen: int = 0  # training tokens so far, over all processes
    elapsed_s: float = 0.0  # seconds of training so far, over every resumed part of the run
    eval_s: float = 0.0  # the part of elapsed_s spent evaluating and saving checkpoints
    eval_cut: bool = False  # a stop cut the evaluation at iter_num short: a resumed run does it first

    def record_eval(self, val_loss: float) -> bool:
        """Take in the val loss of the evaluation at iter_num, now done; True when it is the best so far."""
        self.eval_cut = False
        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_iter, self.evals_since_best = val_loss, self.iter_num, 0
        else:
            self.evals_since_best += 1
        return improved


def check_finite(losses: dict, state: RunState, lr: float, out_dir: Path) -> None:
    """Stop a diverged run with one line, before it could save over a checkpoint."""
    for what, value in losses.items():
        if not math.isfinite(value):
            kept = f"{out_dir / 'best.pt'} still holds iter {state.best_iter}'s weights" if state.best_iter else \
                "no checkpoint was written"
            raise UsageError(f"the {what.replace('_', ' ')} became {value} at iter {state.iter_num} (learning rate "
                             f"{lr:.3g}): training diverged. Lower learning_rate or raise warmup_iters; {kept}")


def save(path: Path, about: dict, state: RunState, model, train_model=None, optimizer=None, scaler=None,
         batch_gen: torch.Generator | None = None) -> None:
    """Write a checkpoint atomically: what the run is (about: model_config, train_config, vocab, data, started_from),
    where it stands, and model's weights: the ones evaluated and sampled from. best.pt holds only these; ckpt.pt
    adds what resuming needs: the optimizer, the grad scaler, the generators, and the weights trained (train_model)
    where they are not model's (with ema, model is their average). Modules uncompiled or compiled in place."""
    ckpt = {"format_version": CHECKPOINT_FORMAT_VERSION, "model": model.state_dict(), **about,
            **bpe.save_fields(about["vocab"]), **asdict(state)}  # a BPE vocabulary: a plain list and its tokenizer
    if optimizer is not None:
        if train_model is not model:
            ckpt["train_model"] = train_model.state_dict()
        ckpt["optimizer"] = optimizer.state_dict()
        ckpt["scaler"] = scaler.state_dict() if scaler.is_enabled() else None
        ckpt["rng"] = rng_state(batch_gen)
    # A failed write is one line; within a run, guard_writes adds what is saved and the command that resumes it.
    write_atomic(path, lambda f: torch.save(ckpt, f), size=tensor_bytes(ckpt))


def tensor_bytes(value) -> int:
    """The bytes of every tensor in value (a dict, list or tensor, nested): most of a checkpoint's size."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def what_is_saved(out_dir: Path) -> str:
    """Which iteration each checkpoint in out_dir holds, for a message (their tensors are not read)."""
    held = []
    for name in ("ckpt.pt", "best.pt"):
        if (out_dir / name).is_file():
            try:
                ckpt = torch.load(out_dir / name, map_location="cpu", weights_only=True, mmap=True)
                held.append(f"{name} holds iter {ckpt['iter_num']}")
            except Exception:  # damaged or foreign: the message is about another file, so say so and go on
                held.append(f"{name} cannot be read")
    return ", ".join(held) if held else "no checkpoint has been saved yet"


@contextmanager
def guard_writes(out_dir: Path, model, ema: bool, resume: str):
    """Around a run, before it writes anything: room for its two checkpoints, or one line and nothing starts
    (ckpt.pt, estimated as the weights and two optimizer moments, once more with ema; best.pt, the weights). While it
    runs: a file it cannot write stops it, with one line that says what its checkpoints hold and how to go on."""
    weights = tensor_bytes(model.state_dict())
    need, free = weights * (5 if ema else 4), shutil.disk_usage(out_dir).free
    if free < need:
        raise UsageError(f"out_dir '{out_dir}' has {megabytes(free)} free, and this run's checkpoints need about "
                         f"{megabytes(need)} (ckpt.pt and best.pt): free some space or choose another out_dir")
    try:
        yield
    except WriteError as e:
        saved = what_is_saved(out_dir)
        then = f"resume: {resume}" if (out_dir / "ckpt.pt").is_file() else "run the same command again"
        raise UsageError(f"{e.what}; {saved}. To go on, {e.fix}, then {then}") from None


def model_shape(ckpt: dict) -> dict:
    """The checkpoint's value of every shape key (model.SHAPE_KEYS). Keys added after it was written are absent
    from it: it was trained with their defaults."""
    saved = asdict(GPTConfig()) | ckpt["model_config"]
    return {key: saved[key] for key in SHAPE_KEYS}


def load_checkpoint(path: Path, device: str = "cpu", mmap: bool = False) -> dict:
    """Load one of our checkpoints safely (weights_only: no code runs) or explain what is wrong with it. mmap: the
    tensors stay in the file, read only where used (for a look at what a checkpoint is, or weights copied once)."""
    if not path.exists():
        raise UsageError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        # weights_only refuses any object that is not a tensor or plain data before building it: such a file
        # could run code when loaded, and a checkpoint of this harness never holds one.
        raise UsageError(f"checkpoint {path} was refused: it holds Python objects other than tensors and plain data, "
                         "which could run code when loaded. Only load checkpoints made by train.py") from None
    except Exception as e:  # a truncated or foreign file surfaces as many exception types; all mean "unreadable"
        raise UsageError(f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                         "it may be truncated or not a checkpoint") from None
    if isinstance(ckpt, dict) and "model_args" in ckpt and "format_version" not in ckpt:
        return from_nanogpt(ckpt, path)
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise UsageError(f"checkpoint {path} is not a checkpoint of this harness (no format_version)")
    if ckpt["format_version"] != CHECKPOINT_FORMAT_VERSION:
        raise UsageError(f"checkpoint {path} has format version {ckpt['format_version']}, this code reads version "
                         f"{CHECKPOINT_FORMAT_VERSION}")
    return ckpt


# ----------------------------------------------------------------------------------------------------------------------
# Sampling from a run

def checkpoint_path(run_dir: Path) -> Path:
    """The run's best.pt, else its ckpt.pt."""
    if not run_dir.is_dir():
        raise UsageError(f"run folder '{run_dir}' not found: pass --out_dir of a run under out/")
    for name in ("best.pt", "ckpt.pt"):
        if (run_dir / name).exists():
            return run_dir / name
    raise UsageError(f"run folder '{run_dir}' has no best.pt or ckpt.pt: it has not reached its first evaluation")


def tokenizer_of(run_dir: Path) -> str | None:
    """How a run's model reads text, from its checkpoint: "characters" or "BPE, N tokens"; None before it has one."""
    try:
        ckpt = load_checkpoint(checkpoint_path(run_dir), mmap=True)  # mmap: the weights are not read
    except UsageError:
        return None
    return f"BPE, {len(ckpt['vocab'])} tokens" if ckpt.get("tokenizer") else "characters"


def load_model(run_dir: Path, device: str):
    """The run's best.pt (else ckpt.pt) as an eval-mode GPT on device, with its vocabulary and checkpoint info."""
    path = checkpoint_path(run_dir)
    ckpt = load_checkpoint(path, device)
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    info = {"path": str(path), "iter_num": ckpt["iter_num"], "best_val_loss": ckpt["best_val_loss"],
            "train_config": ckpt.get("train_config") or {}}  # the run's settings: its data_dir, eval_tokens, ...
    return model, bpe.from_fields(ckpt), info


# ----------------------------------------------------------------------------------------------------------------------
# Resuming

def resume(out_dir: Path, settings: dict, vocab: list[str], data_info: dict, model, optimizer, scaler,
           batch_gen: torch.Generator, announce: bool) -> tuple[RunState, dict | None]:
    """Load out_dir/ckpt.pt into the model, optimizer, grad scaler and generators, after refusing a checkpoint that
    does not fit this run (settings: its config as a dict). Returns the run's state and, with ema, the average."""
    path = out_dir / "ckpt.pt"
    if not path.exists():
        raise UsageError(f"cannot resume: {path} not found. Point --out_dir at the run to resume, "
                         "or leave out --init_from=resume to start a new run")
    device = next(model.parameters()).device
    ckpt = load_checkpoint(path, device)
    check_resumable(ckpt, path, settings, vocab, data_info)
    # With ema on, "model" holds the averaged weights (the ones evaluated and sampled from) and "train_model" the
    # weights being trained.
    model.load_state_dict(ckpt.get("train_model") or ckpt["model"])
    load_optimizer_state(optimizer, ckpt["optimizer"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    state = RunState(**{f.name: ckpt.get(f.name, f.default) for f in fields(RunState)})  # older: fewer fields
    if ckpt.get("rng") is not None:
        restore_rng(ckpt["rng"], batch_gen)
    elif announce:
        print(f"{path} holds no random-number states (nanoGPT saves none): batches and dropout continue from seed "
              f"{settings['seed']}, so this is not the exact run nanoGPT would have continued")
    # best.pt is written before ckpt.pt: if a crash came between the two, best.pt holds a better model than ckpt.pt
    # knows of, and it must not be overwritten by a worse one.
    if (out_dir / "best.pt").exists():
        best = load_checkpoint(out_dir / "best.pt", device)
        if best["best_val_loss"] < state.best_val_loss:
            state.best_val_loss, state.best_iter = best["best_val_loss"], best["iter_num"]
    return state, ckpt["model"] if "train_model" in ckpt else None


def check_resumable(ckpt: dict, path: Path, settings: dict, vocab: list[str], data_info: dict) -> None:
    """Refuse to resume from a checkpoint whose model shape, vocabulary, data, optimizer or frozen layers differ from
    this run's (vocab: the data's, every character of which the checkpoint's model must know)."""
    if ckpt.get("optimizer") is None:
        raise UsageError(f"{path} holds no optimizer state, so it cannot be resumed: start a new run with "
                         "--init_from=scratch")
    saved = model_shape(ckpt)
    problems = [f"cannot resume from {path}: its model has {key} {saved[key]}, this run asks for "
                f"{settings[key]} (set --{key}={saved[key]} or start a new run)"
                for key in SHAPE_KEYS if saved[key] != settings[key]]
    data_dir = settings["data_dir"]
    # A run from a trained model has that model's vocabulary, which may hold more characters than its data, in
    # another order: the data's ids are mapped onto it by character (data.remap_ids).
    unseen = sorted(set(vocab) - set(ckpt["vocab"]))
    if unseen:
        problems.append(f"cannot resume from {path}: {data_dir}/meta.json has characters its model never saw "
                        f"({' '.join(repr(c) for c in unseen[:10])}{' ...' if len(unseen) > 10 else ''}); "
                        "point --data_dir at the data it was trained on")
    saved_data = ckpt.get("data") or data_info  # nanoGPT's checkpoints do not record their data
    for split in ("train", "val"):
        if saved_data[f"{split}_sha256"] != data_info[f"{split}_sha256"]:
            problems.append(
                f"cannot resume from {path}: {data_dir}/{split}.bin ({data_info[f'{split}_tokens']:,} "
                f"tokens, sha256 {data_info[f'{split}_sha256'][:12]}) is not the data it was trained on "
                f"({saved_data[f'{split}_tokens']:,} tokens, sha256 {saved_data[f'{split}_sha256'][:12]}); "
                "point --data_dir at that data or start a new run")
    saved_optimizer = (ckpt.get("train_config") or {}).get("optimizer", "adamw")  # nanoGPT's is AdamW
    if saved_optimizer != settings["optimizer"]:
        problems.append(f"cannot resume from {path}: it was trained with optimizer {saved_optimizer}, this run asks "
                        f"for {settings['optimizer']} (set --optimizer={saved_optimizer} or start a new run)")
    saved_frozen = (ckpt.get("train_config") or {}).get("freeze_layers", 0)  # its optimizer holds the others only
    if saved_frozen != settings["freeze_layers"]:
        problems.append(f"cannot resume from {path}: it was trained with freeze_layers {saved_frozen}, this run asks "
                        f"for {settings['freeze_layers']} (set --freeze_layers={saved_frozen} or start a new run)")
    if problems:
        raise UsageError(problems)


def load_optimizer_state(optimizer, state: dict) -> None:
    """Load a saved optimizer state, refusing one whose per-parameter tensors do not fit the model.

    Every group's settings (betas, weight decay, momentum, fused, ...) stay this run's: a saved state would bring its
    own. That also sets decoupled weight decay explicitly for AdamW states saved by older PyTorch versions, which lack
    the flag and would otherwise load as Adam with L2."""
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, settings):
        group.update(own)
        for p in group["params"]:
            moments = optimizer.state.get(p, {})
            for name, value in moments.items():
                if name != "step" and isinstance(value, torch.Tensor) and value.shape != p.shape:
                    raise UsageError(f"the checkpoint's optimizer state does not fit the model ({name} of shape "
                                     f"{tuple(value.shape)} for a parameter of shape {tuple(p.shape)}): "
                                     "it was saved with another parameter order; start a new run")
            step = moments.get("step")
            if isinstance(step, torch.Tensor):  # torch's AdamW keeps it as a tensor; on the device if fused
                on_device = group.get("fused") or group.get("capturable")
                moments["step"] = step.to(device=p.device if on_device else "cpu", dtype=torch.float32)


def rng_state(batch_gen: torch.Generator) -> dict:
    """Every random-number generator's state, as tensors and plain data (loadable with weights_only)."""
    np_state = np.random.get_state(legacy=False)  # {'bit_generator', 'state': {'key', 'pos'}, 'has_gauss', 'gauss'}
    return {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"], "key": np_state["state"]["key"].tolist(),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(batch_gen.device) if batch_gen.device.type == "cuda" else None,
        "batch": batch_gen.get_state(),
    }


def restore_rng(state: dict, batch_gen: torch.Generator) -> None:
    if "python" in state:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state({"bit_generator": s["bit_generator"], "has_gauss": s["has_gauss"], "gauss": s["gauss"],
                             "state": {"key": np.array(s["key"], dtype=np.uint32), "pos": s["pos"]}})
    torch.set_rng_state(state["torch"].cpu())
    batch_gen.set_state(state["batch"].cpu())
    if batch_gen.device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), batch_gen.device)


# ----------------------------------------------------------------------------------------------------------------------
# nanoGPT's checkpoints

class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numbers only: any other object (which could run code) is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def read_nanogpt_meta(path: Path) -> list[str]:
    """The vocabulary (id -> character) from nanoGPT's meta.pkl, read without running any code in it."""
    try:
        with open(path, "rb") as f:
            meta = _PlainDataUnpickler(f).load()
        itos = meta["itos"]
        return [itos[i] for i in range(meta["vocab_size"])]
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path} is not a readable nanoGPT meta.pkl ({type(e).__name__}: {e})") from None


def nanogpt_meta_path(path: Path, dataset: str) -> Path | None:
    """Where the meta.pkl of nanoGPT's checkpoint at path is: beside it, else where nanoGPT's own sample.py finds
    it, data/<dataset>/meta.pkl of the nanoGPT checkout that holds the run (the nearest folder above the run that
    has one), else under the current folder; None if in none of them."""
    candidates = [path.parent / "meta.pkl"]
    if dataset:
        holders = [*path.resolve().parent.parents, Path.cwd()]
        candidates += [holder / "data" / dataset / "meta.pkl" for holder in holders]
    return next((p for p in candidates if p.is_file()), None)


def from_nanogpt(ckpt: dict, path: Path) -> dict:
    """A nanoGPT ckpt.pt in this harness's layout. The module names are the same (both follow GPT-2), so only
    torch.compile's '_orig_mod.' prefix goes; the vocabulary comes from nanoGPT's meta.pkl (nanogpt_meta_path)."""
    config = ckpt.get("config") or {}
    dataset = config.get("dataset", "")
    meta_path = nanogpt_meta_path(path, dataset)
    if meta_path is None:
        where = f"beside it or in data/{dataset}/ of a folder above it" if dataset else "beside it"
        raise UsageError(f"{path} is a nanoGPT checkpoint, and its vocabulary is in nanoGPT's meta.pkl, which is not "
                         f"{where}: copy data/{dataset or '<dataset>'}/meta.pkl from nanoGPT next to {path.name}")
    args = ckpt["model_args"]
    model_config = {k: args[k] for k in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias")}
    vocab = read_nanogpt_meta(meta_path)
    if len(vocab) != model_config["vocab_size"]:
        raise UsageError(f"{meta_path} has {len(vocab)} characters but {path} was trained with "
                         f"vocab_size {model_config['vocab_size']}: use the meta.pkl of the data it was trained on")
    iter_num = int(ckpt.get("iter_num", 0))
    tokens_per_iter = (config.get("batch_size", 0) * config.get("block_size", 0)
                       * config.get("gradient_accumulation_steps", 0))
    # nanoGPT keeps no RNG states, best iteration, elapsed time or early-stopping count.
    state = RunState(iter_num=iter_num, best_val_loss=float(ckpt.get("best_val_loss", float("nan"))),
                     tokens_seen=iter_num * tokens_per_iter)
    return {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "source": "nanoGPT",
        # nanoGPT without flash attention also saved its causal mask, as the buffer 'attn.bias': not a weight.
        "model": {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items() if not k.endswith(".attn.bias")},
        "model_config": model_config,
        "vocab": vocab,
        **asdict(state),
        "optimizer": ckpt.get("optimizer") or None,
        "rng": None,
    }
