"""MultiLoraLinear: one wrapped nn.Linear / GPT-2 Conv1D serving many adapters in one mixed batch.

Adapters live in slots of stacked tensors: lora_A (S, R, in) and lora_B (S, out, R), padded with zeros to the
largest rank R. Each sequence of the batch carries a slot index; the low-rank term is one gather plus two
batched matmuls per layer, so there is no Python loop over samples or adapters. Zero padding stays exactly zero:
its gradients are zero, and so are its AdamW updates. A slot that does not target this layer has scaling 0.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers always ships it
    Conv1D = ()


class Routing:
    """Which slot each sequence of the current batch uses; shared by every layer, set once per forward."""

    def __init__(self) -> None:
        self.idx: torch.Tensor | None = None  # (groups,) slot of each group of consecutive sequences
        self.masks: dict[str, torch.Tensor] | None = None  # LoRA dropout per layer name: (batch, tokens, in), scaled
        self.every_slot = False  # idx is 0, 1, ..., slots-1: the stacked weights serve as they are, ungathered

    def set(self, idx: torch.Tensor | None, masks: dict[str, torch.Tensor] | None = None, slots: int = 0) -> None:
        """`idx` has one entry per group of equally many consecutive sequences: per sequence in general, per
        adapter when every adapter brings the same number (bigger matmuls, fewer gathered weights)."""
        self.idx, self.masks = idx, masks
        self.every_slot = idx is not None and len(idx) == slots and torch.equal(idx, torch.arange(slots).to(idx))

    def state(self) -> tuple:
        return self.idx, self.masks, self.every_slot

    def restore(self, state: tuple) -> None:
        self.idx, self.masks, self.every_slot = state


def recompute_blocks(model: nn.Module, routing: Routing) -> int:
    """Recompute each transformer block's activations during backward instead of keeping them: the saved
    activations of a step shrink to the blocks' inputs, at the price of a second forward through every block.
    Returns how many blocks were wrapped (0: the model has no transformers GradientCheckpointingLayer).

    Not transformers' own gradient_checkpointing_enable: it only acts in training mode, which would switch the
    frozen base's dropout on, and its replay would not see this step's routing (cleared after the forward)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for block in blocks:
        block.forward = partial(_recomputed, block.forward, routing)
    return len(blocks)


def _recomputed(forward, routing: Routing, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    state = routing.state()  # the step's slots and dropout masks, so the replay computes exactly the same

    def replay(*replay_args, **replay_kwargs):
        outer = routing.state()
        routing.restore(state)  # the replay runs in backward, after the forward has cleared the routing
        try:
            return forward(*replay_args, **replay_kwargs)
        finally:
            routing.restore(outer)

    return checkpoint(replay, *args, use_reentrant=False, **kwargs)


def is_supported(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (Conv1D != () and isinstance(module, Conv1D))


def features(module: nn.Module) -> tuple[int, int]:
    """(in, out) of an nn.Linear (weight: out x in) or a GPT-2 Conv1D (weight: in x out)."""
    rows, cols = module.weight.shape
    return (cols, rows) if isinstance(module, nn.Linear) else (rows, cols)


class MultiLoraLinear(nn.Module):
    def __init__(self, base_layer: nn.Module, routing: Routing, lora_dtype: torch.dtype, name: str = ""):
        super().__init__()
        self.base_layer, self.name = base_layer, name
        self.routing = routing
        self.is_conv1d = not isinstance(base_layer, nn.Linear)
        self.in_features, self.out_features = features(base_layer)
        kw = dict(dtype=lora_dtype, device=base_layer.weight.device)
        self.lora_A = nn.Parameter(torch.zeros(0, 0, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(0, self.out_features, 0, **kw))
        self.register_buffer("scaling", torch.zeros(0, **kw), persistent=False)
        self.state: dict[str, torch.Tensor] = {}  # AdamW moments, same shapes as lora_A / lora_B

    @property
    def slots(self) -> int:
        return self.lora_A.shape[0]

    @property
    def max_rank(self) -> int:
        return self.lora_A.shape[1]

    def resize(self, slots: int, rank: int) -> None:
        """Grow to `slots` x `rank`, keeping every value (parameters and optimizer moments) in place."""
        s0, r0 = self.slots, self.max_rank
        if slots <= s0 and rank <= r0:
            return
        slots, rank = max(slots, s0), max(rank, r0)
        with torch.no_grad():
            a = self.lora_A.new_zeros(slots, rank, self.in_features)
            b = self.lora_B.new_zeros(slots, self.out_features, rank)
            a[:s0, :r0], b[:s0, :, :r0] = self.lora_A, self.lora_B
            self.lora_A, self.lora_B = nn.Parameter(a), nn.Parameter(b)
            scaling = self.scaling.new_zeros(slots)
            scaling[:s0] = self.scaling
            self.scaling = scaling
            for key, old in list(self.state.items()):
                new = (a if key.endswith("A") else b).new_zeros((a if key.endswith("A") else b).shape)
                new[:s0, : old.shape[1], : old.shape[2]] = old
                self.state[key] = new
        for key in ("m_A", "v_A", "m_B", "v_B"):
            self.state.setdefault(key, torch.zeros_like(self.lora_A if key.endswith("A") else self.lora_B))

    @torch.no_grad()
    def init_slot(self, slot: int, rank: int, scaling: float, generator: torch.Generator | None) -> None:
        """PEFT's default init: A ~ kaiming_uniform(a=sqrt(5)), B = 0; scaling 0 means 'not targeted here'."""
        self.lora_A[slot].zero_()
        self.lora_B[slot].zero_()
        for value in self.state.values():
            value[slot].zero_()
        self.scaling[slot] = scaling
        if scaling:
            bound = 1.0 / math.sqrt(self.in_features)  # kaiming_uniform with a=sqrt(5) on a (rank, in) matrix
            a = torch.empty(rank, self.in_features, dtype=torch.float64)
            a.uniform_(-bound, bound, generator=generator)
            self.lora_A[slot, :rank] = a.to(self.lora_A.dtype)

    @torch.no_grad()
    def set_slot(self, slot: int, a: torch.Tensor, b: torch.Tensor, scaling: float) -> None:
        self.lora_A[slot].zero_()
        self.lora_B[slot].zero_()
        self.lora_A[slot, : a.shape[0]] = a
        self.lora_B[slot, :, : b.shape[1]] = b
        self.scaling[slot] = scaling

    def slot_weights(self, slot: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This slot's (A, B) in PEFT's shapes: A (rank, in), B (out, rank)."""
        return self.lora_A[slot, :rank].detach(), self.lora_B[slot, :, :rank].detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        idx = self.routing.idx
        if idx is None or self.slots == 0:
            return y
        if self.routing.every_slot:  # no gathered copies: they would be kept for backward, as big as the weights
            a, b, scaling = self.lora_A, self.lora_B, self.scaling
        else:
            a, b, scaling = self.lora_A[idx], self.lora_B[idx], self.scaling[idx]  # (groups, R, in), (groups, out, R)
        xs = x.to(a.dtype).reshape(idx.shape[0], -1, self.in_features)
        mask = self.routing.masks.get(self.name) if self.routing.masks else None
        if mask is not None:
            xs = xs * mask.view(xs.shape)
        h = torch.bmm(xs, a.transpose(1, 2))
        delta = torch.bmm(h, b.transpose(1, 2)) * scaling.view(-1, 1, 1)
        return y + delta.reshape(y.shape).to(y.dtype)


class SlotAdamW:
    """Each slot's own AdamW (same maths as torch.optim.AdamW), vectorised over slots.

    Per-slot hyper-parameters are (S,) tensors; a slot with active=0 is left exactly as it was.
    """

    def __init__(self, layers: list[MultiLoraLinear]):
        self.layers = layers

    def grad_sq_norms(self) -> torch.Tensor:
        """Per-slot squared gradient norm over every layer: (S,)."""
        total = None
        for layer in self.layers:
            for p in (layer.lora_A, layer.lora_B):
                if p.grad is not None:  # summed in the gradient's dtype, as torch's clip_grad_norm_ does
                    sq = torch.linalg.vector_norm(p.grad, dim=(1, 2)).double().square()
                    total = sq if total is None else total + sq
        return total

    @torch.no_grad()
    def step(self, lr, wd, beta1, beta2, eps, steps, grad_scale, active) -> None:
        """All arguments are (S,) float64 tensors; `steps` is each slot's step count after this update."""
        w1, w2 = (1 - beta1) * active, (1 - beta2) * active
        vectors = {"keep2": 1 - w2, "w1": w1, "w2": w2, "scale": grad_scale, "eps": eps,
                   "step_size": lr * active / (1 - beta1**steps), "bc2_sqrt": (1 - beta2**steps).sqrt(),
                   "decay": 1 - lr * wd * active}  # fmt: skip
        cache: dict = {}
        for layer in self.layers:
            for name, p in (("A", layer.lora_A), ("B", layer.lora_B)):
                if p.grad is None:
                    continue
                key = (p.dtype, p.device)
                if key not in cache:  # converted once per step, not once per layer
                    cache[key] = {k: v.to(device=p.device, dtype=p.dtype).view(-1, 1, 1) for k, v in vectors.items()}
                c = cache[key]
                g = p.grad.mul_(c["scale"])  # in place: the gradient is dropped after the step
                m, v = layer.state["m_" + name], layer.state["v_" + name]
                p.mul_(c["decay"])
                m.lerp_(g, c["w1"])  # as torch.optim.AdamW: m + (1 - beta1) * (g - m)
                v.mul_(c["keep2"]).addcmul_(g, g * c["w2"])
                denom = v.sqrt().div_(c["bc2_sqrt"]).add_(c["eps"])
                p.addcdiv_(m * c["step_size"], denom, value=-1.0)

    def zero_grad(self) -> None:
        for layer in self.layers:
            layer.lora_A.grad = None
            layer.lora_B.grad = None
