"""How each tissue looks in CT, T1 and T2, and the acquisition effects of each scanner.

The procedural anatomy's tissue values (the template anatomy's come from :mod:`.tissue_physics`)
follow the orderings of real scans (T1: WM > GM > CSF; T2: CSF > GM > WM;
CT: bone >> GM > WM > CSF > fat > air = -1000 HU) and vary by a few per cent between subjects.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from preprocessing.demo.anatomy import (
    AIR,
    CORTICAL_BONE,
    CSF,
    DIPLOE,
    FAT,
    GREY_MATTER,
    SOFT_TISSUE,
    VENTRICLE,
    WHITE_MATTER,
    smooth_random_field,
)

#: Mean value of each tissue: HU for CT, scanner units for the MR sequences.
TISSUE_VALUES = {
    "ct": {AIR: -1000.0, SOFT_TISSUE: 45.0, FAT: -95.0, CORTICAL_BONE: 1450.0, CSF: 8.0,
           GREY_MATTER: 40.0, WHITE_MATTER: 27.0, VENTRICLE: 8.0, DIPLOE: 550.0},
    "t1": {AIR: 0.0, SOFT_TISSUE: 420.0, FAT: 950.0, CORTICAL_BONE: 40.0, CSF: 180.0,
           GREY_MATTER: 560.0, WHITE_MATTER: 820.0, VENTRICLE: 180.0, DIPLOE: 750.0},
    "t2": {AIR: 0.0, SOFT_TISSUE: 380.0, FAT: 600.0, CORTICAL_BONE: 30.0, CSF: 1350.0,
           GREY_MATTER: 780.0, WHITE_MATTER: 560.0, VENTRICLE: 1350.0, DIPLOE: 500.0},
}
MODALITIES = ("ct", "t1", "t2")


def subject_tissue_values(rng: np.random.Generator) -> dict[str, dict[int, float]]:
    """Per-subject tissue values: each class varies by ~3 %, air stays fixed.

    CT grey/white matter differ by only ~13 HU, so their variation is drawn in HU (±1.5) rather
    than relatively, which keeps the GM > WM ordering of real CT.
    """
    values = {}
    for modality, table in TISSUE_VALUES.items():
        values[modality] = {}
        for label, value in table.items():
            if label == AIR:
                values[modality][label] = value
            elif modality == "ct" and abs(value) < 100:
                values[modality][label] = float(value + rng.uniform(-1.5, 1.5))
            else:
                values[modality][label] = float(value * rng.uniform(0.97, 1.03))
    return values


def render_tissues(labels: np.ndarray, values: dict[int, float]) -> np.ndarray:
    """Paint a label map with one value per tissue label (the procedural anatomy's contrast).

    Args:
        labels: label map.
        values: value per label.

    Returns:
        float32 image.
    """
    lut = np.zeros(max(values) + 1, dtype=np.float32)
    for label, value in values.items():
        lut[label] = value
    return lut[labels]


def add_texture(image: np.ndarray, tissue: np.ndarray, texture: np.ndarray, texture_scale: float,
                additive: bool) -> np.ndarray:
    """Add a smooth within-tissue texture to an image, in place.

    Args:
        image: float32 image.
        tissue: where the texture applies (outside air).
        texture: unit-variance smooth field of ``image.shape``.
        texture_scale: texture amplitude (HU when ``additive``, else a relative factor).
        additive: add the texture (CT) or multiply by it (MR).

    Returns:
        ``image``.
    """
    if additive:
        image[tissue] += texture_scale * texture[tissue]
    else:
        image[tissue] *= 1.0 + texture_scale * texture[tissue]
    return image


def block_average(image: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor``³ blocks: partial-volume effect of a coarse voxel over a fine rendering."""
    if factor == 1:
        return image
    s = [d // factor for d in image.shape]
    return image[: s[0] * factor, : s[1] * factor, : s[2] * factor].reshape(
        s[0], factor, s[1], factor, s[2], factor).mean(axis=(1, 3, 5), dtype=np.float32)


def mr_bias_field(shape, rng: np.random.Generator, strength: float = 0.18) -> np.ndarray:
    """A smooth multiplicative receive-coil bias field: exp of a random low-order polynomial.

    Args:
        shape: grid shape.
        rng: random generator.
        strength: approximate peak deviation from 1.

    Returns:
        float32 field around 1.
    """
    coords = np.meshgrid(*[np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in shape], indexing="ij", sparse=True)
    x, y, z = coords
    terms = [x, y, z, x * y, y * z, x * z, x * x, y * y, z * z]
    coefficients = rng.normal(0.0, 1.0, len(terms))
    coefficients *= strength / np.abs(coefficients).sum()
    log_field = sum(c * t for c, t in zip(coefficients, terms))
    return np.exp(log_field).astype(np.float32)


def add_rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise: Rician in the head, Rayleigh in air."""
    real = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    imaginary = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.sqrt(real * real + imaginary * imaginary)


def add_ct_noise(image: np.ndarray, sigma_hu: float, rng: np.random.Generator) -> np.ndarray:
    """Quantum noise of a reconstructed CT: Gaussian, slightly correlated in-plane (reconstruction kernel)."""
    noise = rng.normal(0.0, 1.0, image.shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0.6, 0.6, 0.0))
    noise *= sigma_hu / (noise.std() + 1e-12)
    return image + noise


def tissue_texture(shape, spacing, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance texture with a 4 mm correlation length, shared by the three modalities of a subject."""
    return smooth_random_field(shape, spacing, 4.0, rng)
