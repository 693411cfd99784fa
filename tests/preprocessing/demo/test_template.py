"""The MNI152 template read from the installed nilearn package, and its derived tissue maps."""

from __future__ import annotations

import numpy as np
import pytest

from preprocessing.demo import template
from preprocessing.demo.template import TEMPLATE_FILES, TemplateMissingError, load_template_maps, template_folder


@pytest.fixture(scope="module")
def maps():
    return load_template_maps()


def _ras_to_index(maps, point):
    inverse = np.linalg.inv(maps.affine)
    return tuple(np.rint(inverse[:3, :3] @ np.asarray(point, float) + inverse[:3, 3]).astype(int))


def test_template_files_come_from_the_installed_package():
    folder = template_folder()
    assert folder.parts[-3:] == ("nilearn", "datasets", "data")
    for name in TEMPLATE_FILES.values():
        assert (folder / name).is_file()


def test_missing_nilearn_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(template, "nilearn_location", lambda: None)
    with pytest.raises(TemplateMissingError, match="pip install nilearn"):
        template_folder()


def test_missing_template_file_is_named(monkeypatch, tmp_path):
    data = tmp_path / "nilearn" / "datasets" / "data"
    data.mkdir(parents=True)
    (data / TEMPLATE_FILES["t1"]).write_bytes(b"")
    monkeypatch.setattr(template, "nilearn_location", lambda: tmp_path / "nilearn")
    with pytest.raises(TemplateMissingError) as error:
        template_folder()
    message = str(error.value)
    assert str(data) in message and TEMPLATE_FILES["gm"] in message and TEMPLATE_FILES["wm"] in message
    assert TEMPLATE_FILES["t1"] not in message


def test_tissue_fractions_are_fractions(maps):
    total = maps.grey_matter + maps.white_matter
    assert total.max() <= 1.0 + 1e-6 and maps.grey_matter.min() >= 0 and maps.white_matter.min() >= 0
    # Nothing outside the brain mask; GM and WM volumes of an adult-sized template brain (litres).
    assert not total[maps.intracranial == 0].any()
    assert 0.8 < maps.grey_matter.sum() / 1e6 < 1.2
    assert 0.5 < maps.white_matter.sum() / 1e6 < 0.8


def test_ventricles_are_the_lateral_ventricles(maps):
    volume_ml = maps.ventricle.sum() / 1e3
    assert 10 < volume_ml < 40
    csf = maps.intracranial - maps.grey_matter - maps.white_matter
    assert (csf[maps.ventricle > 0] > 0.2).all(), "ventricles are CSF"
    # Both hemispheres, about equally (the template is symmetric), near the midline, above the thalami.
    index = np.argwhere(maps.ventricle > 0)
    x_ras = maps.affine[0, 0] * index[:, 0] + maps.affine[0, 3]
    left, right = (x_ras < 0).sum(), (x_ras > 0).sum()
    assert abs(left - right) < 0.1 * (left + right)
    assert np.abs(x_ras).max() < 45
    i, j, k = _ras_to_index(maps, (16, -12, 20))
    assert maps.ventricle[i - 4:i + 5, j - 4:j + 5, k - 4:k + 5].any()
    # The Sylvian fissures and the cortex are not ventricle.
    assert maps.ventricle[_ras_to_index(maps, (40, 5, 0))] == 0


def test_envelope_distance_is_signed_outward(maps):
    inverse = np.linalg.inv(maps.envelope_affine)

    def distance_at(point):
        i, j, k = np.rint(inverse[:3, :3] @ np.asarray(point, float) + inverse[:3, 3]).astype(int)
        return float(maps.envelope_distance[i, j, k])

    centre = maps.brain_centre_ras
    # The base of the brain lies about 3 cm below the centre of its bounding box.
    assert distance_at(centre) < -20, "deep inside the brain"
    # Straight up from the centre: inside below the vertex, outside above it, growing by 1 mm per mm.
    vertex_z = centre[2] + np.argwhere([distance_at(centre + (0, 0, dz)) > 0 for dz in range(120)])[0, 0]
    assert 60 < vertex_z < 90
    assert distance_at((centre[0], centre[1], vertex_z + 20)) == pytest.approx(20, abs=2.5)
