"""Random diffeomorphisms by scaling and squaring."""

from __future__ import annotations

import numpy as np
import pytest

from preprocessing.demo.grid import Grid
from preprocessing.demo.warp import Lattice, exponentiate, jacobian_determinant, radial_velocity, random_velocity


def _lattice(n=24, step=4.0):
    return Lattice(np.zeros(3), step, (n, n, n))


def test_zero_velocity_is_the_identity():
    assert not exponentiate(np.zeros((3, 8, 8, 8), np.float32), 4.0).any()


def test_constant_velocity_is_a_translation():
    velocity = np.zeros((3, 10, 10, 10), np.float32)
    velocity[1] = 3.0
    displacement = exponentiate(velocity, 4.0)
    assert np.allclose(displacement[1], 3.0, atol=1e-5) and np.allclose(displacement[[0, 2]], 0.0)


def test_exponential_does_not_fold_where_the_raw_field_would():
    lattice = _lattice()
    rng = np.random.default_rng(1)
    # Steep enough that using the velocity itself as a displacement folds space.
    velocity = random_velocity(lattice, amplitude_mm=6.0, correlation_mm=8.0, rng=rng)
    assert jacobian_determinant(velocity, lattice.step).min() < 0
    displacement = exponentiate(velocity, lattice.step, squarings=8)
    assert jacobian_determinant(displacement, lattice.step).min() > 0


def test_radial_flow_expands_around_its_centre():
    lattice = _lattice()
    nodes = lattice.points()
    centre = nodes[:, 12, 12, 12]
    rate = 0.3
    displacement = exponentiate(radial_velocity(nodes, centre, rate, 20.0), lattice.step)
    # Points move away from the centre; the centre stays; volume there grows by exp(3 * rate).
    offset = nodes - centre.reshape(3, 1, 1, 1)
    assert (np.einsum("i...,i...->...", offset, displacement) >= -1e-6).all()
    assert np.abs(displacement[:, 12, 12, 12]).max() < 1e-5
    assert jacobian_determinant(displacement, lattice.step)[12, 12, 12] == pytest.approx(np.exp(3 * rate), rel=0.05)


def test_lattice_upsampling_is_exact_for_affine_fields():
    grid = Grid((30, 26, 22), (1.5, 1.5, 2.0), np.eye(3), np.array([-20.0, -18.0, -20.0]))
    lattice = Lattice.covering(grid, 4.0)
    nodes = lattice.points()
    matrix = np.array([[1.1, 0.1, 0.0], [0.0, 0.9, 0.2], [0.05, 0.0, 1.0]])
    field = np.einsum("ij,j...->i...", matrix, nodes) + np.array([3.0, -2.0, 1.0]).reshape(3, 1, 1, 1)
    upsampled = lattice.upsample(field.astype(np.float32), grid).reshape(3, -1)
    points = grid.world_points().T
    expected = matrix @ points + np.array([[3.0], [-2.0], [1.0]])
    assert np.allclose(upsampled, expected, atol=1e-3)


def test_lattice_needs_an_axis_aligned_grid():
    grid = Grid((4, 4, 4), (1.0, 1.0, 1.0), np.diag([-1.0, -1.0, 1.0]), np.zeros(3))
    with pytest.raises(ValueError, match="identity direction"):
        Lattice.covering(grid, 4.0)
