"""Tiny networks and images for engine tests: a learnable toy translation (domain B = -A) at 32x32."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from modality_translation.engines import CycleGANTrainer, adam_optimizer

SIZE = 32


def tiny_generator(norm: bool = False, dropout: float = 0.0) -> nn.Module:
    """Two 3x3 convolutions and Tanh (optionally instance-normalised and with dropout, like the real generators)."""
    layers = [nn.Conv2d(1, 8, 3, padding=1)]
    if norm:
        layers.append(nn.InstanceNorm2d(8))
    if dropout:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers, nn.LeakyReLU(0.2), nn.Conv2d(8, 1, 3, padding=1), nn.Tanh())


def tiny_discriminator() -> nn.Module:
    """A two-layer PatchGAN-like discriminator: logits on an 16x16 grid for 32x32 inputs."""
    return nn.Sequential(nn.Conv2d(1, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 1, 3, padding=1))


def blob_images(count: int, seed: int, size: int = SIZE) -> torch.Tensor:
    """``(count, 1, size, size)`` images: bright discs (0.8) on a dark background (-0.8)."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    images = []
    for _ in range(count):
        image = torch.full((size, size), -0.8)
        for _ in range(3):
            cy, cx = (torch.rand(2, generator=generator) * size).tolist()
            radius = 3 + 4 * torch.rand(1, generator=generator).item()
            image = torch.where((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2, torch.tensor(0.8), image)
        images.append(image[None])
    return torch.stack(images)


def unpaired_loader(count: int = 16, batch_size: int = 4, shuffle: bool = True) -> DataLoader:
    """Unpaired batches: domain A blobs, domain B negated blobs of other images."""
    a, b = blob_images(count, seed=1), -blob_images(count, seed=2)
    data = [{"A": x, "B": y} for x, y in zip(a, b)]
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle)


def make_trainer(max_epochs: int = 1, loader: DataLoader | None = None, seed: int = 0, **kwargs) -> CycleGANTrainer:
    """A CycleGAN trainer on tiny networks created from ``seed``; ``kwargs`` go to the trainer.

    ``unet=True`` takes small U-Net generators (32x32 inputs) instead of two convolutions.
    """
    torch.manual_seed(seed)
    dropout = kwargs.pop("dropout", 0.0)
    if kwargs.pop("unet", False):
        # Down to 1x1 on 32x32 images: every small-map path of the fast CPU layers.
        from modality_translation.networks import UNetGenerator

        g_ab, g_ba = (UNetGenerator(channels=(8, 16, 16, 16, 16), dropout=dropout) for _ in range(2))
    else:
        g_ab, g_ba = tiny_generator(dropout=dropout), tiny_generator(dropout=dropout)
    d_a, d_b = tiny_discriminator(), tiny_discriminator()
    lr_g = kwargs.pop("lr_g", 2e-3)
    lr_d = kwargs.pop("lr_d", 2e-3)
    return CycleGANTrainer(
        "cpu",
        max_epochs,
        loader if loader is not None else unpaired_loader(),
        g_ab,
        g_ba,
        d_a,
        d_b,
        adam_optimizer([g_ab, g_ba], lr_g),
        adam_optimizer([d_a, d_b], lr_d),
        **kwargs,
    )
