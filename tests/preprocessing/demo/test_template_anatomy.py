"""Heads around the template brain: fractions, variation between subjects, partial volume."""

from __future__ import annotations

import numpy as np
import pytest

from preprocessing.demo.anatomy import (
    AIR, CORTICAL_BONE, CSF, DIPLOE, FAT, GREY_MATTER, SOFT_TISSUE, VENTRICLE, WHITE_MATTER,
)
from preprocessing.demo.grid import Grid
from preprocessing.demo.template import load_template_maps
from preprocessing.demo.template_anatomy import (
    TemplateHeadParameters, TissueFractions, build_tissue_fractions, truth_to_template_index,
)
from preprocessing.demo.warp import jacobian_determinant

GRID = Grid.centred((64, 74, 68), (3.0, 3.0, 3.0))
BRAIN = (GREY_MATTER, WHITE_MATTER, VENTRICLE)


def _subject(seed: int) -> TissueFractions:
    rng = np.random.default_rng(seed)
    return build_tissue_fractions(GRID, TemplateHeadParameters.random(rng), rng)


@pytest.fixture(scope="module")
def heads():
    return _subject(0), _subject(1)


def test_fractions_sum_to_one_and_every_tissue_is_present(heads):
    for head in heads:
        total = sum(head.fractions.values())
        assert np.allclose(total, 1.0, atol=1e-5)
        assert all(f.min() >= -1e-6 for f in head.fractions.values())
        labels = head.dominant_labels()
        for label in (AIR, SOFT_TISSUE, FAT, CORTICAL_BONE, CSF, GREY_MATTER, WHITE_MATTER, VENTRICLE, DIPLOE):
            assert (labels == label).sum() > 5, f"label {label} missing"


def test_brain_volumes_are_adult(heads):
    voxel_ml = np.prod(GRID.spacing) / 1e3
    for head in heads:
        grey = head.fractions[GREY_MATTER].sum() * voxel_ml
        white = head.fractions[WHITE_MATTER].sum() * voxel_ml
        assert 450 < grey < 950 and 300 < white < 700, (grey, white)


def test_two_subjects_differ_in_anatomy(heads):
    a, b = (np.isin(head.dominant_labels(), BRAIN) for head in heads)
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert 0.5 < dice < 0.95


def test_same_seed_same_head():
    a, b = _subject(3), _subject(3)
    for label in a.fractions:
        assert np.array_equal(a.fractions[label], b.fractions[label])


def test_the_deformation_is_invertible():
    maps = load_template_maps()
    for seed in range(3):
        rng = np.random.default_rng(seed)
        params = TemplateHeadParameters.random(rng)
        _, lattice, displacement = truth_to_template_index(GRID, params, maps, rng)
        assert jacobian_determinant(displacement, lattice.step).min() > 0.2
        assert 1.0 < np.abs(displacement).max() < 20.0, "a deformation, not a shift of the whole head"


def test_ventricle_scale_changes_the_ventricles():
    maps = load_template_maps()
    volumes = []
    for scale in (0.8, 1.4):
        params = TemplateHeadParameters(ventricle_scale=scale)
        head = build_tissue_fractions(GRID, params, np.random.default_rng(5), maps)
        volumes.append(head.fractions[VENTRICLE].sum())
    assert volumes[1] > 1.8 * volumes[0]


def test_images_mix_tissues_by_volume_fraction():
    fractions = {GREY_MATTER: np.array([[[0.25, 1.0]]], np.float32), CSF: np.array([[[0.75, 0.0]]], np.float32)}
    head = TissueFractions(fractions)
    image = head.render({GREY_MATTER: 100.0, CSF: 20.0})
    assert np.allclose(image, [[[0.25 * 100 + 0.75 * 20, 100.0]]])
    assert head.dominant_labels().tolist() == [[[CSF, GREY_MATTER]]]


def test_cortex_shows_partial_volume(heads):
    # At the cortex many voxels mix grey matter with CSF or white matter: the partial volume of a scan.
    grey = heads[0].fractions[GREY_MATTER]
    mixed = ((grey > 0.1) & (grey < 0.9)).sum()
    assert mixed > 0.3 * (grey >= 0.9).sum()
