"""The optimizer side of training: the optimizer (AdamW, SGD or Muon) with a peak learning rate per parameter group,
the L1 penalty, and the exponential moving average of the weights (ema).

Muon is written here from Keller Jordan's description (2024, "Muon: An optimizer for hidden layers in neural
networks"). For a weight matrix W with gradient G, each step is

    M = momentum * M + G                      the momentum buffer, as in SGD
    U = G + momentum * M   (Nesterov)  or  M  the direction
    O = orthogonalize(U)                      U with all its singular values replaced by about 1
    W = W * (1 - lr * weight_decay) - lr * sqrt(max(1, rows / cols)) * O

Orthogonalising makes every direction the gradient points in move by the same amount, however small its singular
value: rare but useful directions are not drowned out by the few dominant ones. It is defined for matrices that map
one hidden vector to another; embeddings (one row per character, looked up, not multiplied), the output layer and
the norm gains keep AdamW, which Muon's author recommends too.
"""

import collections
import copy
import functools
import math

import torch

import devices

# The quintic Newton-Schulz iteration X <- a X + b (X X^T) X + c (X X^T)^2 X, with Muon's published coefficients.
# They are tuned for speed, not exactness: five steps take every singular value of a normalised matrix into roughly
# [0.7, 1.2] instead of converging to exactly 1, which is as good for training and much cheaper.
NEWTON_SCHULZ_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximately U V^T for g = U S V^T (its singular value decomposition): g with its singular values set to ~1.
    g is one matrix, or a stack of matrices of one shape (..., rows, cols), each orthogonalised on its own: Muon
    stacks the matrices of each shape, one batched product then does the work of several small ones. The iteration
    runs in dtype (newton_schulz_dtype's choice for the device, in training)."""
    assert g.dim() >= 2, f"orthogonalize takes matrices, got a tensor of shape {tuple(g.shape)}"
    a, b, c = NEWTON_SCHULZ_COEFFS
    x = g.to(dtype).reshape(-1, *g.shape[-2:])  # (matrices, rows, cols)
    wide = x.size(1) <= x.size(2)
    if not wide:
        x = x.mT  # work on the (short, long) orientation, whose Gram matrix X X^T is the small one
    # The Frobenius norm bounds the largest singular value: all are now <= 1.
    x = x / (x.norm(dim=(1, 2), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT  # (matrices, short, short)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b X X^T + c (X X^T)^2, in one call
        x = torch.baddbmm(x, poly, x, beta=a)  # a X + poly X
    if not wide:
        x = x.mT
    return x.reshape(g.shape).to(g.dtype)


@functools.cache
def newton_schulz_dtype(device_type: str) -> torch.dtype:
    """bfloat16 is plenty for an approximate iteration, and faster wherever the hardware multiplies it: GPUs, and
    CPUs with bf16 units (devices.cpu_has_bf16). Elsewhere float32, which is then the faster one."""
    return torch.bfloat16 if device_type == "cuda" or (device_type == "cpu" and devices.cpu_has_bf16()) \
        else torch.float32


class Muon:
    """Muon for the parameter groups with use_muon=True (2-D weight matrices), AdamW for the other groups.

    One optimizer for both, so that a training loop, a checkpoint and a learning-rate schedule see one object with
    one state_dict. Each group's lr is its own: the schedule sets it every step.

    It is not a torch.optim.Optimizer, whose first use imports torch.compile's machinery, a large share of a short
    CPU run's start-up (EXPERIMENTS.md, Search 4), but has what the training loop, the grad scaler and checkpoints
    use of one: param_groups, state, step, zero_grad, and state_dict / load_state_dict in the same format."""

    def __init__(self, params, lr: float, momentum: float = 0.95, nesterov: bool = True, betas=(0.9, 0.99),
                 eps: float = 1e-8, weight_decay: float = 0.0, fused: bool = False, compiled: bool = False):
        self.fused = fused  # AdamW's groups in PyTorch's fused kernel (one call per group) rather than a loop
        # The Newton-Schulz iteration through torch.compile, as the model is: its small kernels fused, launched with
        # no Python between them. Compiled on first use, once per shape of stack.
        self.orthogonalize = torch.compile(orthogonalize, fullgraph=True) if compiled else orthogonalize
        self.defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, betas=betas, eps=eps,
                             weight_decay=weight_decay, use_muon=False)
        self.param_groups = [{**self.defaults, **group, "params": list(group["params"])} for group in params]
        self.state = collections.defaultdict(dict)  # parameter -> its moments
        for group in self.param_groups:
            if group["use_muon"]:
                shapes = [tuple(p.shape) for p in group["params"] if p.dim() != 2]
                if shapes:
                    raise ValueError(f"Muon orthogonalises matrices only; this group holds shapes {shapes}")

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    def state_dict(self) -> dict:
        """torch.optim's format: parameters numbered in group order, the state keyed by those numbers."""
        number = {}
        groups = [{**{k: v for k, v in group.items() if k != "params"},
                   "params": [number.setdefault(id(p), len(number)) for p in group["params"]]}
                  for group in self.param_groups]
        return {"state": {number[id(p)]: moments for p, moments in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict["param_groups"]
        if [len(g["params"]) for g in saved] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the saved optimizer state has other parameter groups than this optimizer")
        param = {n: p for old, group in zip(saved, self.param_groups) for n, p in zip(old["params"], group["params"])}
        self.state = collections.defaultdict(dict)
        for n, moments in state_dict["state"].items():
            p = param[n]
            self.state[p] = {k: v.to(p.device, p.dtype) if isinstance(v, torch.Tensor) else v
                             for k, v in moments.items()}
        for old, group in zip(saved, self.param_groups):
            group.update({k: v for k, v in old.items() if k != "params"})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group: dict) -> None:
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        grads = [p.grad for p in params]
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        # Each step is a few calls on lists of tensors, not a few per matrix: on a GPU every call is a kernel launch.
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads)
        directions = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
        # Matrices of one shape (a (cols, rows) matrix counts as its transpose) are orthogonalised as one stack.
        by_shape = {}
        for i, d in enumerate(directions):
            by_shape.setdefault(tuple(sorted(d.shape)), []).append(i)
        dtype = newton_schulz_dtype(params[0].device.type) if params else torch.float32
        by_scale = {}  # the step's size -> (its weights, their updates)
        for indices in by_shape.values():
            stack = torch.stack([directions[i] if directions[i].size(0) <= directions[i].size(1)
                                 else directions[i].mT for i in indices])
            for i, update in zip(indices, self.orthogonalize(stack, dtype=dtype)):
                p = params[i]
                # An orthogonal (rows, cols) matrix has entries of size ~1/sqrt(max(rows, cols)); the factor keeps
                # the update's size per entry alike for tall matrices (rows > cols), as the published algorithm does.
                weights, updates = by_scale.setdefault(math.sqrt(max(1.0, p.size(0) / p.size(1))), ([], []))
                weights.append(p)
                updates.append(update if p.size(0) <= p.size(1) else update.mT)
        if params and decay:
            torch._foreach_mul_(params, 1 - lr * decay)
        for scale, (weights, updates) in by_scale.items():
            torch._foreach_add_(weights, updates, alpha=-lr * scale)

    def _adamw_step(self, group: dict) -> None:
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state.update(step=torch.zeros((), device=p.device), exp_avg=torch.zeros_like(p),
                             exp_avg_sq=torch.zeros_like(p))
            elif not isinstance(state["step"], torch.Tensor):  # saved by a version that counted in a Python int
                state["step"] = torch.tensor(float(state["step"]), device=p.device)
        if not params:
            return
        steps = [self.state[p]["step"] for p in params]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_add_(steps, 1)
        if self.fused:  # the same arithmetic as the loop below, in one kernel for the whole group
            torch._fused_adamw_(params, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=beta1,
                                beta2=beta2, weight_decay=decay, eps=eps, amsgrad=False, maximize=False)
            return
        for p, exp_avg, exp_avg_sq, step in zip(params, exp_avgs, exp_avg_sqs, steps):
            grad, step = p.grad, step.item()
            exp_avg.lerp_(grad, 1 - beta1)  # the running mean of the gradient
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # and of its square
            # Both averages start at zero: dividing by 1 - beta^step removes that pull towards zero in early steps.
            bias_correction1 = 1 - beta1 ** step
            bias_correction2 = 1 - beta2 ** step
            denom = (exp_avg_sq / bias_correction2).sqrt_().add_(eps)
            p.mul_(1 - lr * decay)
            p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


# ----------------------------------------------------------------------------------------------------------------------
# Building the optimizer, and what the training step asks of it

def weight_matrices(model) -> list[torch.nn.Parameter]:
    """The trained parameters with two or more dimensions (embeddings, Linear weights): the ones weight decay and
    the L1 penalty apply to; biases and norm gains are left alone."""
    return [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]


def make_optimizer(model, learning_rate, weight_decay, betas, fused: bool, kind: str = "adamw",
                   momentum: float = 0.9, nesterov: bool = True, muon_learning_rate: float = 0.02,
                   compiled: bool = False):
    """The optimizer `kind` (adamw, sgd or muon), with weight decay on matrices (embeddings, Linear weights) only,
    not on biases and norm gains. fused: AdamW's fused kernel (Muon's AdamW part too); compiled: Muon's iteration
    compiled.

    Each parameter group carries lr_scale: its peak learning rate over learning_rate, which train.py multiplies the
    scheduled rate by. Only Muon's group differs from 1 (muon_learning_rate / learning_rate)."""
    decay = weight_matrices(model)
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    if kind == "muon":
        # Muon takes the matrices inside the transformer blocks; the embeddings (and the output layer, tied to or
        # beside them) keep AdamW.
        hidden_ids = {id(p) for name, p in model.named_parameters() if ".h." in f".{name}" and p.dim() == 2}
        hidden = [p for p in decay if id(p) in hidden_ids]
        groups = [{"params": hidden, "weight_decay": weight_decay, "use_muon": True,
                   "lr_scale": muon_learning_rate / learning_rate},
                  {"params": [p for p in decay if id(p) not in hidden_ids], "weight_decay": weight_decay,
                   "lr_scale": 1.0},
                  {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
        return Muon([g for g in groups if g["params"]], lr=learning_rate, momentum=momentum, nesterov=nesterov,
                    betas=betas, fused=fused, compiled=compiled)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, nesterov=nesterov)
    assert kind == "adamw", f"unknown optimizer {kind!r}"
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)


def l1_norm(model) -> torch.Tensor:
    """The sum of the absolute values of every entry of the model's weight matrices: the L1 penalty before its
    coefficient. Its gradient, sign(W), pulls every weight towards zero by the same amount, so small weights reach
    exactly zero, where weight decay only shrinks each weight in proportion to its size."""
    return sum(p.abs().sum() for p in weight_matrices(model))


# ----------------------------------------------------------------------------------------------------------------------
# The weight average (ema)

def ema_copy(model, weights: dict | None = None):
    """A copy of the model for the weight average, which the optimizer never touches, only update_ema. It starts
    from the given weights (a resumed run's average), else from the model's."""
    average = copy.deepcopy(model).requires_grad_(False)
    if weights is not None:
        average.load_state_dict(weights)
    return average


def update_ema(ema_model, model, decay: float, iter_num: int) -> None:
    """Move the averaged weights a step towards the model's: ema = d * ema + (1 - d) * weights.

    d ramps up as (1 + t) / (10 + t) to `decay`: early on the average would otherwise be mostly the random
    initial weights for the ~1 / (1 - decay) steps it takes to forget them."""
    d = min(decay, (1 + iter_num) / (10 + iter_num))
    with torch.no_grad():
        torch._foreach_lerp_(list(ema_model.parameters()), [p.detach() for p in model.parameters()], 1 - d)
