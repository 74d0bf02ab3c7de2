"""Where and how a run computes: the device and dtype, mixed precision, the processes torchrun starts, and stop
signals.

Under torchrun each process trains a DistributedDataParallel replica, on its own GPU (cuda:LOCAL_RANK, NCCL) or on
the CPU (gloo). Ranks describes this process's place among them; alone, it is rank 0 of 1 and every agreement
between processes is the process's own value, so train.py's loop reads the same either way.
"""

import os
import platform
import random
import re
import signal
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from configurator import UsageError


# ----------------------------------------------------------------------------------------------------------------------
# Device, dtype, precision

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def parse_device(name: str) -> tuple[str, int | None] | None:
    """(type, index) of a device setting: ("cuda", 1) for cuda:1, ("cpu", None) for cpu; None for a name that is not
    one of DEVICE_CHOICES."""
    kind, colon, index = name.partition(":")
    if kind in ("auto", "cpu", "cuda", "mps") and not colon:
        return kind, None
    if kind == "cuda" and index.isdigit():
        return kind, int(index)
    return None


def resolve_device(requested: str) -> str:
    """The device a setting names, checked against this machine; auto: CUDA, else Apple's GPU (mps), else the CPU."""
    parsed = parse_device(requested)
    if parsed is None:
        raise UsageError(f"'device' must be {DEVICE_CHOICES}, got '{requested}'")
    kind, index = parsed
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device '{requested}' asked for, but this machine has no CUDA GPU: use --device=cpu")
    if index is not None and index >= torch.cuda.device_count():
        raise UsageError(f"device '{requested}' asked for, but there are only {torch.cuda.device_count()} GPUs")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise UsageError("device 'mps' asked for, but this machine has no Apple GPU: use --device=cpu")
    return requested


def resolve_dtype(requested: str, device: str) -> str:
    """auto: bfloat16 on a CUDA GPU that has it, else float16 there; float32 on a CPU and on Apple's GPU (mps), whose
    autocast PyTorch supports only in recent versions (bfloat16 from macOS 14): ask for --dtype=bfloat16 there."""
    if requested == "auto":
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if requested == "float16" and not device.startswith("cuda"):
        raise UsageError(f"dtype 'float16' needs a CUDA GPU (it trains with a grad scaler); on {device} use "
                         "--dtype=float32 or --dtype=bfloat16")
    if requested == "bfloat16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise UsageError("dtype 'bfloat16' is not supported by this GPU: use --dtype=float16")
    if requested == "bfloat16" and device == "mps" and not autocast_available("mps"):
        raise UsageError(f"dtype 'bfloat16' on mps needs autocast for Apple's GPU, which PyTorch {torch.__version__} "
                         "lacks: use --dtype=float32, or a newer PyTorch")
    return requested


def autocast_available(device_type: str) -> bool:
    """Whether this PyTorch has autocast for device_type (torch.amp.is_autocast_available came in 2.4)."""
    check = getattr(torch.amp, "is_autocast_available", None)
    return device_type in ("cuda", "cpu") if check is None else check(device_type)


def fused_adamw_available(device: str) -> bool:
    """Whether this PyTorch has a fused AdamW kernel for device (CUDA always; CPU and Apple's mps in recent versions),
    asked of PyTorch's own list, which is private: without it, CUDA only."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        supported = _get_fused_kernels_supported_devices()
    except (ImportError, AttributeError):
        supported = ["cuda"]
    return device.split(":")[0] in supported


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (x86's avx512_bf16 or amx_bf16, Arm's bf16), read
    from Linux's /proc/cpuinfo (or the text given). Elsewhere False: without such units bfloat16 is emulated, and
    slower than float32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    flags = set(re.findall(r"[\w.]+", " ".join(line.split(":", 1)[-1] for line in cpuinfo.splitlines()
                                              if line.lower().startswith(("flags", "features")))))
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_compile(requested, device: str) -> bool:
    """compile = auto means on for CUDA: on a CPU, compiling takes longer than short runs save (BENCHMARKS.md)."""
    return device.startswith("cuda") if requested == "auto" else requested


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    if device == "cpu":
        return f"{cpu_model()}, {torch.get_num_threads()} threads{', bf16 units' if cpu_has_bf16() else ''}"
    return device


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name as Linux's /proc/cpuinfo (or the text given) has it, e.g. "AMD EPYC 7B13": the same core
    count differs by 2x in speed from one kind to another, so a timing names it. Elsewhere, what platform knows."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return f"{platform.processor() or platform.machine()} CPU"


def synchronize(device) -> None:
    """Wait for the work queued on a GPU: a clock read after this times that work (a CPU runs it as it is called)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def mixed_precision(device: str, dtype: str, fast: bool = True):
    """(autocast context, grad scaler) for training in dtype. The scaler only does anything for float16, whose small
    range needs the loss scaled up so that small gradients do not round to zero. On CUDA, fast also lets the float32
    work left outside autocast use TF32 tensor cores."""
    device_type = "cuda" if device.startswith("cuda") else device
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = fast
        torch.backends.cudnn.allow_tf32 = fast
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    autocast = nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type=device_type, dtype=ptdtype)
    return autocast, torch.amp.GradScaler(device_type, enabled=ptdtype == torch.float16)


def seed_everything(seed: int, device: str) -> torch.Generator:
    """Seed Python's, NumPy's and torch's generators, and return the batch sampler's own generator. On a CPU the same
    seed then gives the same run. The loop uses neither Python's nor NumPy's generator: they are seeded (and saved in
    checkpoints) for code added to it."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------------------
# Several processes: torchrun and DistributedDataParallel

@dataclass
class Ranks:
    """This process's place among the processes of a run. Rank 0 (the master) alone writes out_dir and prints.

    Alone (no torchrun) it is rank 0 of 1, and each agreement below is just this process's own value."""
    device: str  # this process's device: cuda:LOCAL_RANK under torchrun
    rank: int = 0
    world_size: int = 1
    ddp: bool = False  # started by torchrun: the model is wrapped in DistributedDataParallel
    control_group: object = None  # the ranks' small agreements go through gloo on the CPU, so none stalls a GPU

    @property
    def master(self) -> bool:
        return self.rank == 0

    def micro_steps(self, gradient_accumulation_steps: int) -> range:
        """This process's share of an optimizer step's micro-batches (gradient_accumulation_steps counts them all)."""
        share = micro_steps_per_rank(gradient_accumulation_steps, self.world_size)
        return range(self.rank * share, (self.rank + 1) * share)

    def wrap(self, model):
        if not self.ddp:
            return model
        on_gpu = self.device.startswith("cuda")
        return DistributedDataParallel(model, device_ids=[torch.device(self.device)] if on_gpu else None)

    def any(self, flag: bool, check_now: bool = True) -> bool:
        """True on every process when it is True on any: they must all leave the loop at the same step, or those
        still in it would wait forever for the others in the next gradient all-reduce. Agreeing is a round trip
        between the processes: on GPUs it happens only when check_now, lest it hold up steps of milliseconds; on
        CPUs at every call, as their steps take far longer, so that a stop is prompt there too."""
        if not self.ddp:
            return flag
        if not check_now and self.device.startswith("cuda"):
            return False
        t = torch.tensor([float(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control_group)
        return bool(t.item())

    def mean(self, value: float) -> float:
        """The mean over the processes; a sum first (gloo has no average), so a NaN on any reaches every one."""
        if not self.ddp:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, group=self.control_group)
        return t.item() / self.world_size

    def from_master(self, values: dict | None, keys: tuple[str, ...]) -> dict | None:
        """{key: rank 0's values[key]} for each key, on every process (the others' values are not read); None on
        every process when rank 0's values is None."""
        if not self.ddp:
            return None if values is None else {key: values[key] for key in keys}
        given = self.master and values is not None
        t = torch.tensor([float(given)] + [values[key] if given else 0.0 for key in keys], dtype=torch.float64)
        dist.broadcast(t, src=0, group=self.control_group)
        return dict(zip(keys, t[1:].tolist())) if t[0] else None

    def reseed(self, seed: int, iter_num: int) -> None:
        """Ranks but 0 draw dropout masks of their own from step iter_num on: a checkpoint holds rank 0's generators,
        so the others reseed by rank and step. Alone, or on rank 0, the generators stay as they are."""
        if self.rank > 0:
            torch.manual_seed(seed + self.rank + self.world_size * iter_num)

    def barrier(self) -> None:
        if self.ddp:
            dist.barrier(group=self.control_group)


def distributed_env(environ) -> tuple[int, int, int] | None:
    """(rank, local_rank, world_size) from the variables torchrun sets in each process it starts; None without."""
    try:
        rank = int(environ.get("RANK", -1))
        if rank == -1:
            return None
        return rank, int(environ["LOCAL_RANK"]), int(environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        raise UsageError("the environment sets RANK, so RANK, LOCAL_RANK and WORLD_SIZE must all be integers: start "
                         "several processes with torchrun, which sets all three, or unset RANK to train in one "
                         "process") from None


def micro_steps_per_rank(gradient_accumulation_steps: int, world_size: int) -> int:
    """Each process's share of an optimizer step's micro-batches (gradient_accumulation_steps counts all of them)."""
    if gradient_accumulation_steps % world_size:
        multiple = -(-gradient_accumulation_steps // world_size) * world_size
        raise UsageError(f"gradient_accumulation_steps ({gradient_accumulation_steps}) must be divisible by the number "
                         f"of processes ({world_size}): it counts the micro-batches of one step over all processes, "
                         f"and each takes an equal share. Set --gradient_accumulation_steps={multiple} (or another "
                         f"multiple of {world_size}), or start a number of processes that divides it")
    return gradient_accumulation_steps // world_size


def resolve_ddp_device(requested: str, local_rank: int) -> str:
    """Under torchrun each process trains on its own GPU, cuda:LOCAL_RANK, or on the CPU; auto prefers CUDA."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested != "cuda":
        raise UsageError(f"device '{requested}' cannot be used under torchrun: each process takes the GPU "
                         "cuda:LOCAL_RANK (--device=cuda or auto) or the CPU (--device=cpu)")
    resolve_device("cuda")  # explains a machine without CUDA
    if local_rank >= torch.cuda.device_count():
        raise UsageError(f"torchrun started a process with LOCAL_RANK {local_rank}, but this machine has "
                         f"{torch.cuda.device_count()} GPUs: use --nproc_per_node={torch.cuda.device_count()} or fewer")
    return f"cuda:{local_rank}"


@contextmanager
def processes(requested_device: str, gradient_accumulation_steps: int):
    """This process's Ranks: alone, or one of the processes torchrun started, joined to the others for the run."""
    ranks = distributed_env(os.environ)
    if ranks is None:
        yield Ranks(resolve_device(requested_device))
        return
    rank, local_rank, world_size = ranks
    micro_steps_per_rank(gradient_accumulation_steps, world_size)  # refused before any process waits for another
    device = resolve_ddp_device(requested_device, local_rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)  # NCCL and the CUDA defaults then use this process's own GPU
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    try:
        control_group = dist.new_group(backend="gloo") if device.startswith("cuda") else None
        yield Ranks(device, rank, world_size, ddp=True, control_group=control_group)
        # A run that ends well: every process waits for the others (rank 0 still evaluates, samples and saves), so
        # that none tears down its connections while another still has work: a rank that did could abort.
        dist.barrier(group=control_group)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------------
# Stop signals

class StopRequest:
    """Ctrl-C or SIGTERM asks the loop to stop after the current step, or within a batch of an evaluation, and save;
    a second one stops at once.

    Under torchrun the signal reaches torchrun, which passes it on to every process; announce=False (ranks > 0) keeps
    them from all printing the same message."""

    def __init__(self, announce: bool = True):
        self.requested = False
        self.announce = announce
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            if self.announce:
                tqdm.write("second stop request: quitting at once. Checkpoints already written stay as they were")
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            tqdm.write("stop requested: finishing this step (or cutting the evaluation short) and saving ckpt.pt "
                       "(press Ctrl-C again to quit at once)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
