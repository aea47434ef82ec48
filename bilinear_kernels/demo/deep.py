"""The demo's deep model: a residual stack of bilinear blocks on the digits, trained the way the
published code trains its image models.

Architecture of the published image model (`image/model.py`): an embedding E (d × 64, no bias),
L blocks x ← x + (W x) ⊙ (V x), each a packed nn.Linear(d, 2d) with no output projection, and a
head (10 × d, no bias); no norms, so every logit is a polynomial of degree 2^L in the pixels,
which `decompose_network` decomposes exactly. Training as there: AdamW with weight decay and a
cosine-annealed learning rate, stepped once per epoch; the digits set is smaller than the
published batch of 2048, so batches are smaller and the learning rate higher.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..nn import Bilinear
from .training import N_CLASSES, N_PIXELS, Digits, TrainedModel, _few_threads, accuracy


@dataclass
class DeepConfig:
    layers: int = 3
    hidden: int = 32
    epochs: int = 60
    batch_size: int = 128
    lr: float = 3e-3
    # the published image models' default weight decay (their Config.wd)
    weight_decay: float = 0.5
    seed: int = 0


class DigitsResidualStack(nn.Module):
    """logits = H r_L with r_0 = E x and r_l = r_{l-1} + (W_l r_{l-1}) ⊙ (V_l r_{l-1}), bias-free.

    `embed`, `blocks`, `head` and `residual` are the published image model's names, which
    `BilinearNetwork.from_module` reads."""

    def __init__(self, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Linear(N_PIXELS, hidden, bias=False)
        self.blocks = nn.ModuleList([Bilinear(hidden, hidden, None) for _ in range(layers)])
        self.head = nn.Linear(hidden, N_CLASSES, bias=False)
        self.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.embed(x)
        for block in self.blocks:
            r = r + block(r)
        return self.head(r)


def train_deep(data: Digits, config: DeepConfig, device: torch.device, progress: bool = True) -> TrainedModel:
    """AdamW with weight decay and a per-epoch cosine schedule, seeded: the same seed gives the same
    weights on a CPU."""
    from tqdm.auto import tqdm

    if min(config.epochs, config.hidden, config.batch_size, config.layers) < 1:
        raise ValueError(f"epochs, hidden, batch_size and layers must be positive, got {config.epochs}, "
                         f"{config.hidden}, {config.batch_size}, {config.layers}")
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = DigitsResidualStack(config.hidden, config.layers).to(device)
    x_tr, y_tr = data.x_train.to(device), data.y_train.to(device)
    x_te, y_te = data.x_test.to(device), data.y_test.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    history = []
    started = time.perf_counter()
    with _few_threads(device):
        bar = tqdm(range(config.epochs), desc=f"training {config.layers}-layer", unit="epoch", disable=not progress)
        for epoch in bar:
            model.train()
            perm = torch.randperm(len(x_tr), generator=gen).to(device)
            total = 0.0
            for start in range(0, len(x_tr), config.batch_size):
                idx = perm[start:start + config.batch_size]
                loss = nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            sched.step()
            test_acc = accuracy(model, x_te, y_te)
            history.append({"epoch": epoch + 1, "train_loss": total / len(x_tr), "test_accuracy": test_acc})
            bar.set_postfix(loss=f"{total / len(x_tr):.3f}", test_acc=f"{test_acc:.3f}")
    model.eval()
    return TrainedModel(model, config, device, time.perf_counter() - started, history)
