"""Tiny modules mirroring the published bilinear models' layouts (PUBLISHED_LAYOUTS.md), written
from that description: a packed nn.Linear(d, 2h) block, an MLP with packed `w` and a down
projection `p` (or `o`), an image model of embed → blocks → head, and the bilinear
autoencoders' left/right(/down) layout (tdooms/bae)."""
from __future__ import annotations

import torch
from torch import nn

D = 6


class PackedBlock(nn.Linear):
    """nn.Linear(d, 2h) whose output is chunk(2)-ed into (left, right) and multiplied; `gate` on the left."""

    def __init__(self, d, h, bias=False, gate=None):
        super().__init__(d, 2 * h, bias=bias)
        self.gate = gate if gate is not None else nn.Identity()

    def forward(self, x):
        left, right = super().forward(x).chunk(2, dim=-1)
        return self.gate(left) * right


class PublishedMLP(nn.Module):
    def __init__(self, d, h, bias=False, down="p", gate=None):
        super().__init__()
        self.w = PackedBlock(d, h, bias=bias, gate=gate)
        setattr(self, down, nn.Linear(h, d, bias=bias))
        self.down = down

    def forward(self, x):
        return getattr(self, self.down)(self.w(x))


class ImageModel(nn.Module):
    """embed → packed blocks (optionally residual) → head, as the image models."""

    def __init__(self, d_input=8, d_hidden=D, n_layer=2, residual=False):
        super().__init__()
        self.embed = nn.Linear(d_input, d_hidden, bias=False)
        self.blocks = nn.ModuleList([PackedBlock(d_hidden, d_hidden) for _ in range(n_layer)])
        self.head = nn.Linear(d_hidden, 3, bias=False)
        self.residual = residual

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = x + block(x) if self.residual else block(x)
        return self.head(x)


class BilinearAutoencoder(nn.Module):
    """The bilinear autoencoders' layout (tdooms/bae): latents (left x̂) ⊙ (right x̂) of the
    normalised input x̂ = x/‖x‖, with `left`, `right` (F, d) parameters, or nn.Linear(d, F) with
    biases (`linear=True`), and in the mixed variant a mixing `down` (B, F) of the latents."""

    def __init__(self, d, n_latents, bottleneck=None, linear=False):
        super().__init__()
        if linear:
            self.left, self.right = nn.Linear(d, n_latents), nn.Linear(d, n_latents)
        else:
            self.left = nn.Parameter(torch.randn(n_latents, d) / d ** 0.5)
            self.right = nn.Parameter(torch.randn(n_latents, d) / d ** 0.5)
        if bottleneck is not None:
            self.down = nn.Parameter(torch.randn(bottleneck, n_latents) / n_latents ** 0.5)

    def _project(self, side, x):
        return side(x) if isinstance(side, nn.Linear) else nn.functional.linear(x, side)

    def forward(self, x):
        x = x / x.norm(dim=-1, keepdim=True)
        return self._project(self.left, x) * self._project(self.right, x)


class MixedAutoencoder(BilinearAutoencoder):
    """The mixed variant with a `features()` giving the mixes down · latents."""

    def features(self, x):
        return nn.functional.linear(self(x), self.down)
