"""A procedural head: scalp, fat, skull (cortical tables and diploë), CSF, folded cortex, white
matter, deep grey nuclei and ventricles, different for every subject.

Built procedurally rather than from a template so that the demo needs no data download and no
heavy dependency, and so that every tissue class exists as an exact label map that later measures
contrast, registration and artefact removal against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from preprocessing.demo.grid import Grid, upsample_linear

# Tissue labels of ``truth/<subject>/labels.nii.gz``.
AIR, SOFT_TISSUE, FAT, CORTICAL_BONE, CSF, GREY_MATTER, WHITE_MATTER, VENTRICLE, DIPLOE = range(9)
LABEL_NAMES = {
    AIR: "air",
    SOFT_TISSUE: "scalp",
    FAT: "fat",
    CORTICAL_BONE: "cortical_bone",
    CSF: "csf",
    GREY_MATTER: "grey_matter",
    WHITE_MATTER: "white_matter",
    VENTRICLE: "ventricle",
    DIPLOE: "diploe",
}


@dataclass
class HeadParameters:
    """Per-subject anatomy; every length in mm.

    Args:
        centre: LPS centre of the cranium ellipsoid.
        semi_axes: cranium semi-axes (left-right, anterior-posterior, superior-inferior).
        layers: thickness of skin, subcutaneous fat, galea, outer table, diploë, inner table and
            subarachnoid CSF, from the outside in.
        sulcal_depth: how deep sulci cut into the brain.
        sulcal_scale: correlation length of the folding pattern (smaller: more, narrower gyri).
        ventricle_scale: size factor of the ventricles (atrophy makes them larger).
        midline_shift: left-right offset of the deep structures.
    """

    centre: tuple[float, float, float] = (0.0, 0.0, 5.0)
    semi_axes: tuple[float, float, float] = (74.0, 94.0, 88.0)
    layers: dict = field(
        default_factory=lambda: {
            "skin": 2.0,
            "fat": 3.5,
            "galea": 1.5,
            "outer_table": 2.3,
            "diploe": 3.0,
            "inner_table": 2.0,
            "csf": 2.5,
        }
    )
    sulcal_depth: float = 14.0
    sulcal_scale: float = 3.5
    ventricle_scale: float = 1.0
    midline_shift: float = 0.0

    @classmethod
    def random(cls, rng: np.random.Generator) -> "HeadParameters":
        """Draw a plausible adult head."""
        base = cls()
        semi_axes = tuple(float(a * rng.uniform(0.93, 1.06)) for a in base.semi_axes)
        layers = {name: float(t * rng.uniform(0.85, 1.2)) for name, t in base.layers.items()}
        return cls(
            centre=(float(rng.uniform(-2, 2)), float(rng.uniform(-3, 3)), float(5 + rng.uniform(-3, 3))),
            semi_axes=semi_axes,
            layers=layers,
            sulcal_depth=float(rng.uniform(12.0, 17.0)),
            sulcal_scale=float(rng.uniform(3.0, 4.0)),
            ventricle_scale=float(rng.uniform(0.75, 1.4)),
            midline_shift=float(rng.uniform(-1.5, 1.5)),
        )


def smooth_random_field(shape, spacing, correlation_mm: float, rng: np.random.Generator) -> np.ndarray:
    """A zero-mean, unit-variance Gaussian random field with the given correlation length.

    Low-frequency fields are drawn on a coarse lattice and interpolated up, which costs a fraction
    of filtering full-resolution noise and gives the same smoothness.

    Args:
        shape: output shape.
        spacing: mm per voxel of the output.
        correlation_mm: correlation length (Gaussian sigma) in mm.
        rng: random generator.

    Returns:
        float32 array of ``shape``.
    """
    spacing = np.asarray(spacing, dtype=float)
    step = np.maximum(correlation_mm / 2.0 / spacing, 1.0)
    coarse_shape = tuple(int(np.ceil(s / st)) + 3 for s, st in zip(shape, step))
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), sigma=2.0, mode="wrap")
    coarse -= coarse.mean()
    coarse /= coarse.std() + 1e-12
    positions = [np.arange(s, dtype=np.float32) / st + 1.0 for s, st in zip(shape, step)]
    return upsample_linear(coarse, positions)


def _ellipsoid_depth(offset: np.ndarray, semi_axes, scale: np.ndarray | float = 1.0) -> np.ndarray:
    """Approximate depth (mm) below the surface of an ellipsoid, positive inside.

    ``radius_along_ray - distance`` for the ray from the centre through each point: exact on the
    axes of the ellipsoid and within a few per cent elsewhere, which is all a phantom needs.
    """
    normalised = np.sqrt(sum((offset[i] / semi_axes[i]) ** 2 for i in range(offset.shape[0]))) / scale
    distance = np.sqrt(sum(offset[i] ** 2 for i in range(offset.shape[0])))
    return distance * (1.0 / np.maximum(normalised, 1e-6) - 1.0)


def build_labels(grid: Grid, params: HeadParameters, rng: np.random.Generator) -> np.ndarray:
    """Render the label map of one head on ``grid`` (identity direction expected).

    Args:
        grid: the common truth grid.
        params: the subject's anatomy.
        rng: random generator for the folding pattern and the spatially varying thicknesses.

    Returns:
        uint8 label array of ``grid.shape`` with the labels of :data:`LABEL_NAMES`.
    """
    shape, spacing = grid.shape, grid.spacing
    axes = [grid.origin[a] + np.arange(shape[a], dtype=np.float32) * spacing[a] for a in range(3)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    cx, cy, cz = params.centre
    offset = np.array([x - cx, y - cy, z - cz], dtype=object)

    shape_variation = 1.0 + 0.02 * smooth_random_field(shape, spacing, 35.0, rng)
    depth = _ellipsoid_depth(offset, params.semi_axes, shape_variation).astype(np.float32)
    thickness_variation = smooth_random_field(shape, spacing, 15.0, rng)

    labels = np.zeros(shape, dtype=np.uint8)

    # Neck: soft tissue with a fat layer and a cervical spine, below the cranium.
    neck_offset = np.array([x - cx, (y - cy - 12.0) + 0 * z], dtype=object)
    neck_depth = _ellipsoid_depth(neck_offset, (46.0, 52.0)) + 0 * z
    neck = (neck_depth > 0) & (z < cz - 30.0)
    labels[neck] = SOFT_TISSUE
    labels[neck & (neck_depth > 2.0) & (neck_depth < 6.0)] = FAT
    spine = ((x - cx) ** 2 + (y - cy - 24.0) ** 2 < 7.0**2) & (z < cz - 50.0)
    labels[spine] = CORTICAL_BONE

    boundaries = np.cumsum([params.layers[k] for k in ("skin", "fat", "galea", "outer_table", "diploe", "inner_table", "csf")])
    # Fat and diploë vary most in thickness across the head; the others follow a milder pattern.
    modulated = depth.copy()
    layer_labels = (SOFT_TISSUE, FAT, SOFT_TISSUE, CORTICAL_BONE, DIPLOE, CORTICAL_BONE, CSF)
    inside_head = depth > 0
    previous = 0.0
    for bound, label in zip(boundaries, layer_labels):
        local_bound = bound * (1.0 + 0.12 * thickness_variation)
        region = inside_head & (modulated >= previous) & (modulated < local_bound)
        labels[region] = label
        previous = local_bound
    brain = inside_head & (modulated >= previous)
    brain_depth = modulated - previous

    # Folded cortex: sulci are thin CSF sheets along the zero set of a band-limited random field,
    # lined by grey matter that follows them down to the sulcal depth; white matter fills the gyri.
    folds = ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), sigma=[params.sulcal_scale / s for s in spacing]
    )
    folds /= folds.std() + 1e-12
    depth_variation = params.sulcal_depth * (1.0 + 0.25 * thickness_variation)
    abs_folds = np.abs(folds)
    labels[brain] = WHITE_MATTER
    grey = brain & ((brain_depth < 3.0) | ((abs_folds < 0.75) & (brain_depth < depth_variation + 2.5)))
    labels[grey] = GREY_MATTER
    sulcus = brain & (abs_folds < 0.14) & (brain_depth < depth_variation)
    labels[sulcus] = CSF

    # Interhemispheric fissure above the corpus callosum.
    mx = cx + params.midline_shift
    medial = brain & (z > cz + 18.0) & (brain_depth < 40.0)
    labels[medial & (np.abs(x - mx) < 3.5)] = GREY_MATTER
    labels[medial & (np.abs(x - mx) < 0.8)] = CSF

    vs = params.ventricle_scale
    for side in (-1.0, 1.0):
        # Deep grey nuclei (thalamus / basal ganglia), drawn before the ventricles that border them.
        nuclei = ((x - mx - side * 15.0) / 8.0) ** 2 + ((y - cy - 2.0) / 14.0) ** 2 + ((z - cz - 4.0) / 9.0) ** 2 < 1.0
        labels[nuclei & brain] = GREY_MATTER
        # Lateral ventricle: an ellipsoid bent into an arc over the thalamus.
        arc = (z - cz - 16.0) + 0.012 * (y - cy + 2.0) ** 2
        lateral = (
            ((x - mx - side * 9.0 * vs) / (6.5 * vs)) ** 2 + ((y - cy + 2.0) / 28.0) ** 2 + (arc / (9.0 * vs)) ** 2
        ) < 1.0
        labels[lateral & brain] = VENTRICLE
    third = ((x - mx) / (1.3 * vs)) ** 2 + ((y - cy) / 11.0) ** 2 + ((z - cz - 2.0) / 8.0) ** 2 < 1.0
    labels[third & brain] = VENTRICLE
    return labels


def block_mode_centre(labels: np.ndarray, factor: int) -> np.ndarray:
    """Down-sample a supersampled label map by taking each block's centre sample (``factor`` odd)."""
    c = factor // 2
    return labels[c::factor, c::factor, c::factor]


def landmarks_from_labels(labels: np.ndarray, grid: Grid) -> dict[str, list[float]]:
    """Anatomical landmarks (LPS mm) read off a label map.

    Centroids of the ventricles and deep nuclei, and where rays from the brain centroid leave the
    scalp (vertex, frontal, occipital, left and right temporal): points spread over the head so that
    both rigid and non-rigid registration errors show.

    Args:
        labels: label map on ``grid``.
        grid: its grid.

    Returns:
        ``{name: [x, y, z]}`` in LPS mm.
    """

    def centroid(mask: np.ndarray) -> np.ndarray:
        return grid.index_to_world(np.argwhere(mask).mean(axis=0))

    brain = np.isin(labels, (GREY_MATTER, WHITE_MATTER, VENTRICLE))
    centre = centroid(brain)
    centre_index = grid.world_to_index(centre)
    ventricles = labels == VENTRICLE
    # LPS: +x is the patient's left.
    points = {
        "brain_centroid": centre,
        "left_lateral_ventricle": centroid(ventricles & (np.arange(labels.shape[0])[:, None, None] > centre_index[0] + 2)),
        "right_lateral_ventricle": centroid(ventricles & (np.arange(labels.shape[0])[:, None, None] < centre_index[0] - 2)),
    }
    head = labels != AIR
    directions = {
        "vertex": (0.0, 0.0, 1.0),
        "frontal_scalp": (0.0, -1.0, 0.0),
        "occipital_scalp": (0.0, 1.0, 0.0),
        "left_temporal_scalp": (1.0, 0.0, 0.3),
        "right_temporal_scalp": (-1.0, 0.0, 0.3),
    }
    step = min(grid.spacing) / 2.0
    for name, direction in directions.items():
        direction = np.asarray(direction) / np.linalg.norm(direction)
        distances = np.arange(0.0, 200.0, step)
        ray = centre[None, :] + distances[:, None] * direction[None, :]
        inside = ndimage.map_coordinates(head.astype(np.uint8), grid.world_to_index(ray).T, order=0, mode="constant")
        last = np.nonzero(inside)[0].max()
        points[name] = ray[last]
    return {name: [round(float(v), 4) for v in point] for name, point in points.items()}
