"""Smooth random diffeomorphisms: each demo subject's brain is the template's, deformed by one.

A displacement drawn as a smooth random field can fold (its Jacobian turn negative) where it is
steep. Integrating a stationary velocity field instead, by scaling and squaring as in DARTEL and
ANTs' SyN, gives a map that is invertible by construction: the exponential of the field is the
composition of ``2**steps`` displacements each too small to fold.

Written here rather than taken from ANTs because ANTs exposes no random field generator and the
demo needs the map on its own lattice, seeded per subject.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from preprocessing.demo.anatomy import smooth_random_field
from preprocessing.demo.grid import Grid, upsample_linear

#: Squarings: the velocity is divided by 2**SQUARINGS before composing; 6 keeps each step < 0.1 mm
#: for the displacements drawn here.
SQUARINGS = 6


@dataclass(frozen=True)
class Lattice:
    """A coarse regular lattice over a grid (identity direction), on which a smooth map is computed.

    Args:
        origin: LPS position of node ``(0, 0, 0)``.
        step: node spacing (mm).
        shape: nodes per axis.
    """

    origin: np.ndarray
    step: float
    shape: tuple[int, int, int]

    @classmethod
    def covering(cls, grid: Grid, step: float) -> "Lattice":
        """The lattice of spacing ``step`` whose node 0 is ``grid``'s voxel 0 and which covers the grid.

        Args:
            grid: a grid with identity direction.
            step: node spacing (mm).

        Returns:
            The lattice.
        """
        if not np.allclose(grid.direction, np.eye(3)):
            raise ValueError("the lattice needs a grid with identity direction")
        extent = (np.asarray(grid.shape) - 1) * np.asarray(grid.spacing)
        shape = tuple(int(np.ceil(e / step)) + 2 for e in extent)
        return cls(np.asarray(grid.origin, float), float(step), shape)

    def points(self) -> np.ndarray:
        """LPS coordinates of the nodes, shape ``(3, *shape)``."""
        axes = [self.origin[a] + self.step * np.arange(self.shape[a]) for a in range(3)]
        return np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float32)

    def upsample(self, field: np.ndarray, grid: Grid) -> np.ndarray:
        """A field on the nodes (leading axes kept) interpolated linearly at every voxel of ``grid``."""
        positions = [(np.asarray(grid.origin[a]) - self.origin[a] + grid.spacing[a] * np.arange(grid.shape[a]))
                     / self.step for a in range(3)]
        return upsample_linear(field, positions)


def exponentiate(velocity: np.ndarray, step: float, squarings: int = SQUARINGS) -> np.ndarray:
    """Displacement of the flow of a stationary velocity field after unit time (scaling and squaring).

    Args:
        velocity: ``(3, nx, ny, nz)`` velocity (mm) on a lattice of spacing ``step`` mm.
        step: lattice spacing (mm).
        squarings: number of compositions.

    Returns:
        ``(3, nx, ny, nz)`` float32 displacement (mm): the map is ``x -> x + displacement(x)``.
    """
    displacement = (velocity / 2.0**squarings).astype(np.float32)
    nodes = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in velocity.shape[1:]], indexing="ij"))
    for _ in range(squarings):
        # phi o phi: (x + u(x)) + u(x + u(x)); clamped at the lattice border, where the field is smooth.
        where = nodes + displacement / step
        displacement = displacement + np.stack([
            ndimage.map_coordinates(component, where, order=1, mode="nearest") for component in displacement])
    return displacement


def radial_velocity(lattice_points: np.ndarray, centre, rate: float, radius_mm: float) -> np.ndarray:
    """A velocity field that expands (``rate`` > 0) or shrinks space around ``centre``, fading with a Gaussian.

    Args:
        lattice_points: ``(3, ...)`` LPS node coordinates.
        centre: LPS centre (mm).
        rate: log of the local scale factor at the centre.
        radius_mm: Gaussian radius of the affected region.

    Returns:
        ``(3, ...)`` float32 velocity (mm).
    """
    offset = lattice_points - np.asarray(centre, dtype=np.float32).reshape(3, *([1] * (lattice_points.ndim - 1)))
    weight = np.exp(-(offset**2).sum(axis=0) / (2.0 * radius_mm**2))
    return (rate * offset * weight).astype(np.float32)


def random_velocity(lattice: Lattice, amplitude_mm: float, correlation_mm: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random velocity field: three independent Gaussian random fields, ``amplitude_mm`` std each.

    Args:
        lattice: the lattice.
        amplitude_mm: standard deviation of each component (mm).
        correlation_mm: correlation length (mm).
        rng: random generator.

    Returns:
        ``(3, *lattice.shape)`` float32 velocity.
    """
    spacing = (lattice.step,) * 3
    return np.stack([amplitude_mm * smooth_random_field(lattice.shape, spacing, correlation_mm, rng)
                     for _ in range(3)]).astype(np.float32)


def jacobian_determinant(displacement: np.ndarray, step: float) -> np.ndarray:
    """Jacobian determinant of ``x -> x + displacement(x)`` on the lattice (central differences).

    Args:
        displacement: ``(3, nx, ny, nz)`` displacement (mm).
        step: lattice spacing (mm).

    Returns:
        ``(nx, ny, nz)`` determinant; positive everywhere for a diffeomorphism.
    """
    gradient = np.stack([np.stack(np.gradient(component, step), axis=0) for component in displacement])
    jacobian = gradient + np.eye(3).reshape(3, 3, 1, 1, 1)
    return np.linalg.det(np.moveaxis(jacobian, (0, 1), (-2, -1)))
