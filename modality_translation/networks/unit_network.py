"""UNIT's two coupled VAE-GANs (Liu et al. 2017): both domains' encoders and generators, one shared latent space.

UNIT assumes that an image of domain A and its counterpart in domain B have one code ``z`` in a
shared latent space. Each domain has an encoder ``E`` (image -> mean ``mu`` of ``q(z | x) = N(mu, I)``)
and a generator ``G`` (``z`` -> image); the last block of both encoders and the first block of both
generators are **one** set of weights, which ties the domains' codes together. Translation is
``G_B(E_A(x_A))``; a VAE reconstruction is ``G_A(E_A(x_A))``.

:class:`UNITNetwork` holds the four networks (:class:`~modality_translation.networks.unit_encoder.UNITEncoder`,
:class:`~modality_translation.networks.unit_generator.UNITGenerator`) with their two shared blocks, and
the "Modified UNIT" switches of the course study: SAGAN self-attention in the encoders, the
generators, both or neither (``attention``), and spectral normalisation of the encoders and/or the
generators (``spectral_norm``, a list of network kinds; ``"discriminator"`` may be listed too, for the
discriminators the bundle builds from the same list).

Two ways to call it, both through ``forward`` so that a ``DistributedDataParallel`` wrapper sees every
pass:

- ``net(x)``: translation in ``direction`` (``"a_to_b"`` or ``"b_to_a"``) through the latent mean, no
  noise: inference, validation, export (``UNITTranslation`` gives a module of each direction);
- ``net(x_a, x_b)``: the training pass of one UNIT iteration (a dict, see :meth:`UNITNetwork.forward`):
  ``z = mu + eta`` with ``eta ~ N(0, I)`` (the paper's reparameterisation with unit variance), VAE
  reconstructions, translations, and the cycle (each translation encoded again and decoded back).

In the training pass the shared blocks process both domains in one batched call, and a generator's
shared block output serves both its reconstruction and its translation (they decode the same ``z``,
as in the authors' code), so the 10 encoder/generator passes of an iteration take 4 shared-block
calls instead of 10. Normalisation is per sample (instance norm or none), so batching changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from modality_translation.networks.init import init_weights
from modality_translation.networks.layers import apply_spectral_norm, check_divisible_input
from modality_translation.networks.residual_block import ResidualBlock
from modality_translation.networks.unit_encoder import UNIT_DOWNSAMPLINGS, UNITEncoder
from modality_translation.networks.unit_generator import UNITGenerator

#: Where the SAGAN self-attention blocks go.
ATTENTION_PLACES = ("encoder", "generator", "both", "none")
#: Network kinds whose convolutions spectral normalisation can wrap.
SPECTRAL_NORM_KINDS = ("encoder", "generator", "discriminator")
#: Translation directions.
DIRECTIONS = ("a_to_b", "b_to_a")
#: Normalisations of the UNIT networks (per sample: the training pass batches the domains together).
UNIT_NORMS = ("instance", "none")


def check_attention(attention: str) -> str:
    """Return ``attention`` lower-cased.

    Raises:
        ValueError: unless it is one of ``"encoder"``, ``"generator"``, ``"both"``, ``"none"``.
    """
    if not isinstance(attention, str) or attention.lower() not in ATTENTION_PLACES:
        raise ValueError(f"attention must be one of {ATTENTION_PLACES}, got {attention!r}")
    return attention.lower()


def check_spectral_norm(kinds: str | Sequence[str] | None) -> frozenset[str]:
    """The network kinds of a spectral-norm switch: a list of kinds (``[]`` or ``None``: none; one string: one kind).

    Raises:
        ValueError: for an entry that is not one of ``"encoder"``, ``"generator"``, ``"discriminator"``.
    """
    if kinds is None:
        return frozenset()
    entries = [kinds] if isinstance(kinds, str) else kinds
    try:
        entries = list(entries)
    except TypeError:
        entries = [kinds]
    unknown = [kind for kind in entries if not isinstance(kind, str) or kind.lower() not in SPECTRAL_NORM_KINDS]
    if unknown:
        raise ValueError(f"spectral_norm lists network kinds, each one of {SPECTRAL_NORM_KINDS}; got {kinds!r}")
    return frozenset(kind.lower() for kind in entries)


def check_direction(direction: str) -> str:
    """Return ``direction`` lower-cased.

    Raises:
        ValueError: unless it is ``"a_to_b"`` or ``"b_to_a"``.
    """
    if not isinstance(direction, str) or direction.lower() not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return direction.lower()


def _batched(module: nn.Module, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``module`` of each input, in one call when the shapes allow it (the layers are per sample)."""
    if all(x.shape[1:] == inputs[0].shape[1:] for x in inputs):
        return module(torch.cat(inputs)).split([x.shape[0] for x in inputs])
    return tuple(module(x) for x in inputs)


class UNITNetwork(nn.Module):
    """Encoders and generators of domains A and B around a shared latent space (UNIT).

    Args:
        spatial_dims: 2 for slices, 3 for volumes.
        a_channels: channels of domain A's images.
        b_channels: channels of domain B's images.
        channels: the encoders' first-layer width (64 in UNIT); the latent code has ``8 * channels``
            feature maps at a quarter of the image size.
        num_res_blocks: private residual blocks of each encoder and each generator (3 in UNIT), besides
            the shared one.
        norm: ``"instance"`` (the authors' implementation) or ``"none"`` (the table as printed).
        attention: SAGAN self-attention in the ``"encoder"``s (after the strided convolutions), the
            ``"generator"``s (before the transposed convolutions), ``"both"`` or ``"none"``.
        spectral_norm: network kinds whose convolutions are spectrally normalised: any of
            ``"encoder"``, ``"generator"`` (applied here) and ``"discriminator"`` (for the
            discriminators built from the same list, ignored here); ``[]`` for none.
        direction: the translation of ``net(x)``: ``"a_to_b"`` or ``"b_to_a"``.
        init_type: weight initialisation, see :func:`~modality_translation.networks.init.init_weights`.
        init_gain: standard deviation / gain of the initialisation.

    Attributes:
        encoder_a, encoder_b: the encoders; ``encoder_a.shared is encoder_b.shared``.
        generator_a, generator_b: the generators; ``generator_a.shared is generator_b.shared``.

    Raises:
        ValueError: for an unknown attention place, spectral-norm kind, direction or norm, or fewer than
            1 residual block.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        a_channels: int = 1,
        b_channels: int = 1,
        channels: int = 64,
        num_res_blocks: int = 3,
        norm: str = "instance",
        attention: str = "none",
        spectral_norm: str | Sequence[str] | None = (),
        direction: str = "a_to_b",
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        attention = check_attention(attention)
        spectral_kinds = check_spectral_norm(spectral_norm)
        if not isinstance(norm, str) or norm.lower() not in UNIT_NORMS:
            raise ValueError(f"norm of a UNIT network must be one of {UNIT_NORMS} (per sample), got {norm!r}")
        norm = norm.lower()
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        self.spatial_dims = spatial_dims
        self.direction = check_direction(direction)
        self.attention = attention
        self.spectral_norm = tuple(kind for kind in SPECTRAL_NORM_KINDS if kind in spectral_kinds)
        latent = channels * 2 ** (UNIT_DOWNSAMPLINGS + 1)
        shared_encoder_block = ResidualBlock(spatial_dims, latent, norm=norm)
        shared_generator_block = ResidualBlock(spatial_dims, latent, norm=norm)
        in_encoder = attention in ("encoder", "both")
        in_generator = attention in ("generator", "both")
        self.encoder_a, self.encoder_b = (
            UNITEncoder(shared_encoder_block, spatial_dims, in_channels, channels, num_res_blocks, norm, in_encoder)
            for in_channels in (a_channels, b_channels)
        )
        self.generator_a, self.generator_b = (
            UNITGenerator(shared_generator_block, spatial_dims, out_channels, channels, num_res_blocks, norm, in_generator)
            for out_channels in (a_channels, b_channels)
        )
        init_weights(self, init_type=init_type, gain=init_gain)
        # After the initialisation, which writes the parametrisation's ``original``; the shared
        # blocks are wrapped once (apply_spectral_norm skips what is already wrapped).
        if "encoder" in spectral_kinds:
            apply_spectral_norm(self.encoder_a)
            apply_spectral_norm(self.encoder_b)
        if "generator" in spectral_kinds:
            apply_spectral_norm(self.generator_a)
            apply_spectral_norm(self.generator_b)

    @property
    def shared_encoder_block(self) -> nn.Module:
        """The last block of both encoders (one object)."""
        return self.encoder_a.shared

    @property
    def shared_generator_block(self) -> nn.Module:
        """The first block of both generators (one object)."""
        return self.generator_a.shared

    def encoder(self, domain: str) -> UNITEncoder:
        """The encoder of ``"a"`` or ``"b"``."""
        return {"a": self.encoder_a, "b": self.encoder_b}[domain]

    def generator(self, domain: str) -> UNITGenerator:
        """The generator of ``"a"`` or ``"b"``."""
        return {"a": self.generator_a, "b": self.generator_b}[domain]

    def translate(self, x: torch.Tensor, direction: str | None = None) -> torch.Tensor:
        """``G_target(E_source(x))`` through the latent mean (no noise).

        Args:
            x: images of the source domain, ``(batch, channels, *spatial)`` in [-1, 1], spatial sizes
                multiples of 4.
            direction: ``"a_to_b"`` or ``"b_to_a"``; default: the network's ``direction``.

        Raises:
            ValueError: for an unknown direction or spatial sizes that are not multiples of 4.
        """
        source, _, target = check_direction(direction or self.direction).partition("_to_")
        check_divisible_input(x, self.spatial_dims, 2**UNIT_DOWNSAMPLINGS, "UNITNetwork")
        return self.generator(target)(self.encoder(source)(x))

    def forward(self, x: torch.Tensor, x_b: torch.Tensor | None = None, direction: str | None = None):
        """Translate ``x`` (one argument), or run UNIT's training pass on ``x`` (domain A) and ``x_b`` (domain B).

        Args:
            x: images, ``(batch, channels, *spatial)`` in [-1, 1], spatial sizes multiples of 4: the
                source domain's (translation) or domain A's (training pass).
            x_b: domain B's images (same spatial size as ``x``), for the training pass.
            direction: the translation's direction (default: the network's ``direction``).

        Returns:
            The translated images; or, for the training pass, a dict of tensors: ``mu_a``, ``mu_b``
            (latent means of ``x_a``, ``x_b``), ``vae_a = G_A(z_a)``, ``vae_b = G_B(z_b)`` (VAE
            reconstructions), ``fake_b = G_B(z_a)``, ``fake_a = G_A(z_b)`` (translations),
            ``mu_fake_a = E_A(fake_a)``, ``mu_fake_b = E_B(fake_b)``, ``cyc_a = G_A(mu_fake_b + eta)``,
            ``cyc_b = G_B(mu_fake_a + eta)`` (cycle reconstructions), where ``z = mu + eta``, ``eta ~ N(0, I)``
            drawn from torch's global generator.

        Raises:
            ValueError: for an unknown direction or spatial sizes that are not multiples of 4.
        """
        if x_b is None:
            return self.translate(x, direction)
        for images in (x, x_b):
            check_divisible_input(images, self.spatial_dims, 2**UNIT_DOWNSAMPLINGS, "UNITNetwork")
        mu_a, mu_b = self._encode(x, x_b)
        shared_a, shared_b = _batched(self.shared_generator_block, *self._sample(mu_a, mu_b))
        vae_a, fake_a = _batched(self.generator_a.private, shared_a, shared_b)
        vae_b, fake_b = _batched(self.generator_b.private, shared_b, shared_a)
        mu_fake_a, mu_fake_b = self._encode(fake_a, fake_b)
        shared_fake_a, shared_fake_b = _batched(self.shared_generator_block, *self._sample(mu_fake_a, mu_fake_b))
        return {
            "mu_a": mu_a, "mu_b": mu_b, "vae_a": vae_a, "vae_b": vae_b, "fake_a": fake_a, "fake_b": fake_b,
            "mu_fake_a": mu_fake_a, "mu_fake_b": mu_fake_b,
            "cyc_a": self.generator_a.private(shared_fake_b), "cyc_b": self.generator_b.private(shared_fake_a),
        }

    def _encode(self, x_a: torch.Tensor, x_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E_A(x_a), E_B(x_b))``, the shared block in one call."""
        return _batched(self.shared_encoder_block, self.encoder_a.private(x_a), self.encoder_b.private(x_b))

    @staticmethod
    def _sample(*means: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``mu + eta``, ``eta ~ N(0, I)``: the reparameterisation of ``q(z | x) = N(mu, I)``."""
        return tuple(mu + torch.randn_like(mu) for mu in means)
