"""A head around a real brain: the MNI152 template's tissue maps, deformed per subject, wrapped in
skull, diploë, scalp, fat and a neck.

Each subject's brain is the template (:mod:`.template`) seen through an anisotropic scaling and a
smooth random diffeomorphism (:mod:`.warp`), with the lateral ventricles enlarged or shrunk by a
local radial flow (as atrophy or youth would). The tissues are returned as volume fractions, so
that the images rendered from them (:mod:`.tissue_physics`) carry the partial volume of a scan;
the truth label map is each voxel's dominant tissue.

The skull and scalp are layers at fixed distances outside a smooth dural envelope of the brain,
with thicknesses that vary over the head, as the procedural head (:mod:`.anatomy`) builds them
inside its ellipsoid. The template stops at the foramen magnum (MNI z = -72 mm): the layers close
under the brainstem there and the neck continues below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
from preprocessing.demo.grid import LPS_TO_RAS, Grid
from preprocessing.demo.template import TemplateMaps, load_template_maps
from preprocessing.demo.warp import Lattice, exponentiate, radial_velocity, random_velocity

#: Layers outside the dural envelope, from the inside out, and their label.
LAYERS = (("csf", CSF), ("inner_table", CORTICAL_BONE), ("diploe", DIPLOE), ("outer_table", CORTICAL_BONE),
          ("galea", SOFT_TISSUE), ("fat", FAT), ("skin", SOFT_TISSUE))
#: Where the brain's bounding-box centre lies in the truth space (LPS mm): the procedural head's
#: cranium centre, so that the scanner fields of view of the demo fit both anatomies.
BRAIN_CENTRE_LPS = (0.0, 0.0, 5.0)
# The warp is computed on a 4 mm lattice and interpolated: it is smooth on a 30 mm scale.
LATTICE_STEP_MM = 4.0
# The lateral ventricles' centre in the template (RAS mm), around which their size varies, and the
# radius over which that local scaling fades (the ventricles span about 6 cm front to back).
VENTRICLE_CENTRE_RAS = (0.0, -12.0, 16.0)
VENTRICLE_FLOW_RADIUS_MM = 22.0


@dataclass
class TemplateHeadParameters:
    """Per-subject variation of the template head; lengths in mm.

    Args:
        scale: brain size relative to the template along left-right, anterior-posterior and
            superior-inferior (the ICBM152 average brain is larger than most adults').
        warp_mm: standard deviation of each velocity component of the random diffeomorphism.
        warp_correlation_mm: correlation length of the velocity field.
        ventricle_scale: local linear scale factor at the centre of the lateral ventricles, fading
            over about 2 cm (the tissue around them gives way, as in atrophy).
        layers: thickness of the subarachnoid CSF, inner table, diploë, outer table, galea,
            subcutaneous fat and skin, from the inside out.
    """

    scale: tuple[float, float, float] = (0.92, 0.92, 0.92)
    warp_mm: float = 3.0
    warp_correlation_mm: float = 30.0
    ventricle_scale: float = 1.0
    layers: dict = field(default_factory=lambda: {
        "csf": 1.5, "inner_table": 2.0, "diploe": 3.0, "outer_table": 2.3, "galea": 1.5, "fat": 3.5, "skin": 2.0})

    @classmethod
    def random(cls, rng: np.random.Generator) -> "TemplateHeadParameters":
        """Draw a plausible adult head around the template brain."""
        base = cls()
        overall = rng.uniform(0.87, 0.97)
        return cls(
            scale=tuple(float(overall * rng.uniform(0.97, 1.03)) for _ in range(3)),
            warp_mm=float(rng.uniform(2.5, 3.5)),
            warp_correlation_mm=float(rng.uniform(25.0, 35.0)),
            ventricle_scale=float(rng.uniform(0.85, 1.35)),
            layers={name: float(t * rng.uniform(0.85, 1.2)) for name, t in base.layers.items()},
        )


@dataclass
class TissueFractions:
    """Volume fraction of each tissue label per voxel (summing to 1).

    Args:
        fractions: ``{label: float32 array}`` for every label, all of one shape.
    """

    fractions: dict[int, np.ndarray]

    @property
    def shape(self) -> tuple[int, ...]:
        return next(iter(self.fractions.values())).shape

    def dominant_labels(self, factor: int = 1) -> np.ndarray:
        """The label of the largest fraction, at the centre voxel of each ``factor``³ block.

        Args:
            factor: block size (odd); 1 labels every voxel.

        Returns:
            uint8 label map of the block grid.
        """
        c = factor // 2
        order = sorted(self.fractions)
        stacked = np.stack([self.fractions[label][c::factor, c::factor, c::factor] for label in order])
        return np.asarray(order, dtype=np.uint8)[np.argmax(stacked, axis=0)]

    def render(self, values: dict[int, float]) -> np.ndarray:
        """The image whose voxels mix the tissues' ``values`` by volume fraction (float32)."""
        image = np.zeros(self.shape, dtype=np.float32)
        for label, fraction in self.fractions.items():
            if values[label] != 0.0:
                image += np.float32(values[label]) * fraction
        return image


def truth_to_template_index(grid: Grid, params: TemplateHeadParameters, maps: TemplateMaps,
                            rng: np.random.Generator) -> tuple[np.ndarray, Lattice, np.ndarray]:
    """Where each voxel of ``grid`` samples the template: the subject's deformation, on a lattice.

    A truth point ``p`` (LPS) moves by the diffeomorphism to ``p + u(p)``, which the inverse of the
    subject's scaling carries into the template (RAS). Composed on a 4 mm lattice and interpolated
    linearly: the affine part is exact, the warp is smooth on a far larger scale.

    Args:
        grid: truth grid (identity direction).
        params: the subject's parameters.
        maps: the template maps.
        rng: random generator for the velocity field.

    Returns:
        ``(template_ras, lattice, displacement)``: ``(3, *lattice.shape)`` template RAS points of the
        lattice nodes, the lattice, and the displacement ``u`` on it (mm).
    """
    lattice = Lattice.covering(grid, LATTICE_STEP_MM)
    nodes = lattice.points()
    scale = np.asarray(params.scale, dtype=np.float32).reshape(3, 1, 1, 1)
    brain_centre_lps = (LPS_TO_RAS[:3, :3] @ maps.brain_centre_ras).reshape(3, 1, 1, 1)
    truth_centre = np.asarray(BRAIN_CENTRE_LPS, dtype=np.float32).reshape(3, 1, 1, 1)
    velocity = random_velocity(lattice, params.warp_mm, params.warp_correlation_mm, rng)
    ventricle_lps = LPS_TO_RAS[:3, :3] @ np.asarray(VENTRICLE_CENTRE_RAS)
    ventricle_truth = truth_centre[:, 0, 0, 0] + np.asarray(params.scale) * (ventricle_lps - brain_centre_lps[:, 0, 0, 0])
    # Mapping truth -> template, pulling points towards the centre enlarges what lies there.
    velocity += radial_velocity(nodes, ventricle_truth, -float(np.log(params.ventricle_scale)),
                                VENTRICLE_FLOW_RADIUS_MM)
    displacement = exponentiate(velocity, lattice.step)
    template_lps = brain_centre_lps + (nodes + displacement - truth_centre) / scale
    template_ras = np.einsum("ij,j...->i...", LPS_TO_RAS[:3, :3], template_lps).astype(np.float32)
    return template_ras, lattice, displacement


def sample_template(volume: np.ndarray, affine: np.ndarray, ras: np.ndarray, inside: np.ndarray | None = None,
                    cval: float = 0.0) -> np.ndarray:
    """Linear samples of a template map at RAS points ``(3, N)`` (optionally only where ``inside``).

    Args:
        volume: the map.
        affine: its voxel index -> RAS mm matrix.
        ras: ``(3, N)`` points.
        inside: optional ``(N,)`` boolean: sample only these points, ``cval`` elsewhere.
        cval: value outside the map (and outside ``inside``).

    Returns:
        ``(N,)`` float32 samples.
    """
    inverse = np.linalg.inv(affine).astype(np.float32)
    points = ras if inside is None else ras[:, inside]
    index = inverse[:3, :3] @ points + inverse[:3, 3:4]
    values = ndimage.map_coordinates(volume, index, order=1, mode="constant", cval=cval, prefilter=False)
    if inside is None:
        return values.astype(np.float32)
    out = np.full(ras.shape[1], cval, dtype=np.float32)
    out[inside] = values
    return out


def build_tissue_fractions(grid: Grid, params: TemplateHeadParameters, rng: np.random.Generator,
                           maps: TemplateMaps | None = None) -> TissueFractions:
    """Render one template head's tissue fractions on ``grid`` (identity direction expected).

    Args:
        grid: the grid (the truth grid, or its supersampled copy).
        params: the subject's parameters.
        rng: random generator (deformation, layer thickness pattern).
        maps: the template maps (read from nilearn when ``None``).

    Returns:
        The fractions.
    """
    maps = maps or load_template_maps()
    shape, spacing = grid.shape, grid.spacing
    template_ras, lattice, _ = truth_to_template_index(grid, params, maps, rng)
    ras = lattice.upsample(template_ras, grid).reshape(3, -1)
    mean_scale = float(np.mean(params.scale))
    # Distances in the template shrink with the subject's scale.
    distance = sample_template(maps.envelope_distance, maps.envelope_affine, ras, cval=1e3) * np.float32(mean_scale)
    intracranial_region = distance < 1.0
    grey = sample_template(maps.grey_matter, maps.affine, ras, intracranial_region)
    white = sample_template(maps.white_matter, maps.affine, ras, intracranial_region)
    ventricle_csf = sample_template(maps.ventricle, maps.affine, ras, intracranial_region)
    brain_mask = sample_template(maps.intracranial, maps.affine, ras, intracranial_region)
    del ras

    # Layer boundaries as distances outside the envelope, each thickness varying over the head.
    thickness_variation = smooth_random_field(shape, spacing, 15.0, rng).reshape(-1)
    voxel = float(min(spacing))
    boundaries = [np.zeros_like(distance)]
    for name, _ in LAYERS:
        boundaries.append(boundaries[-1] + np.float32(params.layers[name]) * (1.0 + 0.12 * thickness_variation))
    del thickness_variation

    def beyond(bound: np.ndarray) -> np.ndarray:
        # The part of a voxel beyond a boundary surface, for a surface locally plane across the voxel.
        return np.clip(0.5 + (distance - bound) / voxel, 0.0, 1.0)

    fractions: dict[int, np.ndarray] = {}
    inside = 1.0 - beyond(boundaries[0])
    # Inside the envelope but outside the template's brain mask: subarachnoid CSF.
    csf = inside * (brain_mask * np.clip(1.0 - grey - white, 0.0, 1.0) + (1.0 - brain_mask))
    fractions[GREY_MATTER] = inside * brain_mask * grey
    fractions[WHITE_MATTER] = inside * brain_mask * white
    ventricle = np.minimum(csf, inside * brain_mask * ventricle_csf)
    fractions[VENTRICLE] = ventricle
    fractions[CSF] = csf - ventricle
    for (name, label), lower, upper in zip(LAYERS, boundaries[:-1], boundaries[1:]):
        fractions[label] = fractions.get(label, 0.0) + beyond(lower) - beyond(upper)
    head = 1.0 - beyond(boundaries[-1])
    del boundaries, distance, grey, white, brain_mask, ventricle_csf

    # Neck below the skull base, where the head leaves air: soft tissue, a fat layer and the spine.
    axes = [grid.origin[a] + np.arange(shape[a], dtype=np.float32) * spacing[a] for a in range(3)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    cx, cy, cz = BRAIN_CENTRE_LPS
    neck_radius = np.sqrt(((x - cx) / 46.0) ** 2 + ((y - cy - 12.0) / 52.0) ** 2)

    def flat(region: np.ndarray) -> np.ndarray:
        return np.broadcast_to(region, shape).reshape(-1)

    neck = flat((neck_radius < 1.0) & (z < cz - 45.0))
    neck_fat = flat((neck_radius > 0.88) & (neck_radius < 0.95))
    spine = flat(((x - cx) ** 2 + (y - cy - 24.0) ** 2 < 7.0**2) & (z < cz - 65.0))
    air = 1.0 - head
    for label, region in ((CORTICAL_BONE, neck & spine), (FAT, neck & neck_fat & ~spine),
                          (SOFT_TISSUE, neck & ~neck_fat & ~spine)):
        fractions[label] = fractions[label] + air * region
        air = air * ~region
    fractions[AIR] = air

    return TissueFractions({label: np.ascontiguousarray(np.broadcast_to(fractions[label], air.shape),
                                                        dtype=np.float32).reshape(shape)
                            for label in sorted(fractions)})
