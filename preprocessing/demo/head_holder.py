"""The CT artefact of the CT<->MR study: a curved head-holder plate and the couch under the head.

Both are fixed to the scanner, so they are drawn in the raw CT grid after the head has been placed
there. The plate sits a few millimetres behind the occiput and touches the scalp through a few
contact pads; plate and pads are denser than the bone threshold, the couch nearly as dense, so a
threshold on bone keeps them and only the morphology of the artefact mask can separate them.
"""

from __future__ import annotations

import numpy as np

from preprocessing.demo.grid import Grid

#: Labels of the artefact in ``truth/<subject>/ct_raw_labels.nii.gz`` (after the tissue labels).
HOLDER_PLATE, COUCH, CONTACT_PAD = 9, 10, 11
HOLDER_HU = {HOLDER_PLATE: 950.0, COUCH: 700.0, CONTACT_PAD: 900.0}


def add_head_holder(ct_hu: np.ndarray, head: np.ndarray, grid: Grid, rng: np.random.Generator,
                    n_pads: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Draw the holder plate, its contact pads and the couch into a raw CT.

    Args:
        ct_hu: raw CT in HU on ``grid`` (identity direction: +y is posterior, i.e. towards the couch).
        head: boolean head mask on ``grid``.
        grid: the CT grid.
        rng: random generator (gap, pad positions).
        n_pads: number of contact pads.

    Returns:
        The CT with the artefact, and a uint8 map of the artefact labels (0 elsewhere).
    """
    spacing = np.asarray(grid.spacing)
    x = grid.origin[0] + np.arange(grid.shape[0]) * spacing[0]
    y = grid.origin[1] + np.arange(grid.shape[1]) * spacing[1]
    z = grid.origin[2] + np.arange(grid.shape[2]) * spacing[2]
    head_index = np.argwhere(head)
    centre = grid.index_to_world(head_index.mean(axis=0))
    dx = x[:, None] - centre[0]
    dy = y[None, :] - centre[1]
    radius = np.sqrt(dx**2 + dy**2)
    # Angle from the posterior direction (+y), in degrees, signed towards the patient's left.
    angle = np.degrees(np.arctan2(dx, dy))
    back = np.abs(angle) < 75.0
    head_radius = float(radius[np.any(head, axis=2) & back].max())

    gap = rng.uniform(6.0, 10.0)
    plate_thickness = 4.0
    inner = head_radius + gap
    artefact = np.zeros(grid.shape, dtype=np.uint8)
    plate_2d = back & (radius >= inner) & (radius < inner + plate_thickness)
    artefact[plate_2d] = HOLDER_PLATE

    couch_top = centre[1] + inner + plate_thickness + 6.0
    couch_2d = (y[None, :] >= couch_top) & (y[None, :] < couch_top + 15.0) & np.ones_like(radius, dtype=bool)
    artefact[couch_2d] = COUCH

    z_head = grid.index_to_world(head_index)[:, 2]
    z_low, z_high = np.percentile(z_head, [30, 70])
    pad_width = max(14.0, 3.0 * float(spacing.max()))
    for pad_angle in np.linspace(-35.0, 35.0, n_pads) + rng.uniform(-8.0, 8.0, n_pads):
        pad_z = rng.uniform(z_low, z_high)
        arc = np.radians(np.abs(angle - pad_angle)) * radius
        window_2d = (arc < pad_width / 2) & (radius < inner) & (radius > head_radius - 40.0)
        window_z = np.abs(z - pad_z) < pad_width / 2
        pad = window_2d[:, :, None] & window_z[None, None, :] & ~head
        artefact[pad] = CONTACT_PAD

    out = ct_hu.copy()
    for label, value in HOLDER_HU.items():
        out[artefact == label] = value
    return out, artefact
