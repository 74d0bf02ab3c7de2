"""Muon: orthogonalised momentum for a transformer's hidden weight matrices, AdamW for everything else.

Written here from Keller Jordan's description of Muon (2024, "Muon: An optimizer for hidden layers in neural
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

import math

import torch

# The quintic Newton-Schulz iteration X <- a X + b (X X^T) X + c (X X^T)^2 X, with Muon's published coefficients.
# They are tuned for speed, not exactness: five steps take every singular value of a normalised matrix into roughly
# [0.7, 1.2] instead of converging to exactly 1, which is as good for training and much cheaper.
NEWTON_SCHULZ_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T for g = U S V^T (its singular value decomposition): g with its singular values set to ~1."""
    assert g.dim() == 2, f"orthogonalize takes a matrix, got a tensor of shape {tuple(g.shape)}"
    a, b, c = NEWTON_SCHULZ_COEFFS
    # bfloat16 is plenty for an approximate iteration and fast on a GPU; CPUs without bf16 units are faster in fp32.
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    wide = x.size(0) <= x.size(1)
    if not wide:
        x = x.mT  # work on the (short, long) orientation, whose Gram matrix X X^T is the small one
    x = x / (x.norm() + 1e-7)  # the Frobenius norm bounds the largest singular value: all are now <= 1
    for _ in range(steps):
        gram = x @ x.mT  # (short, short)
        x = a * x + (b * gram + c * gram @ gram) @ x
    if not wide:
        x = x.mT
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for the parameter groups with use_muon=True (2-D weight matrices), AdamW for the other groups.

    One optimizer for both, so that a training loop, a checkpoint and a learning-rate schedule see one object with
    one state_dict. Each group's lr is its own: the schedule sets it every step."""

    def __init__(self, params, lr: float, momentum: float = 0.95, nesterov: bool = True, betas=(0.9, 0.99),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, betas=betas, eps=eps,
                        weight_decay=weight_decay, use_muon=False)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["use_muon"]:
                shapes = [tuple(p.shape) for p in group["params"] if p.dim() != 2]
                if shapes:
                    raise ValueError(f"Muon orthogonalises matrices only; this group holds shapes {shapes}")

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
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.mul_(momentum).add_(grad)
            direction = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
            update = orthogonalize(direction)
            # An orthogonal (rows, cols) matrix has entries of size ~1/sqrt(max(rows, cols)); the factor keeps the
            # update's size per entry alike for tall matrices (rows > cols), as the published algorithm does.
            scale = math.sqrt(max(1.0, p.size(0) / p.size(1)))
            p.mul_(1 - lr * decay)
            p.add_(update, alpha=-lr * scale)

    def _adamw_step(self, group: dict) -> None:
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(grad, 1 - beta1)  # the running mean of the gradient
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # and of its square
            # Both averages start at zero: dividing by 1 - beta^step removes that pull towards zero in early steps.
            bias_correction1 = 1 - beta1 ** state["step"]
            bias_correction2 = 1 - beta2 ** state["step"]
            denom = (exp_avg_sq / bias_correction2).sqrt_().add_(eps)
            p.mul_(1 - lr * decay)
            p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
