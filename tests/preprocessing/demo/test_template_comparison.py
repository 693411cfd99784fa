"""The template beside a demo subject: the subject's own deformation is reproduced from the seed."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from preprocessing.demo import build_demo_cohort
from preprocessing.demo.anatomy import GREY_MATTER, VENTRICLE, WHITE_MATTER
from preprocessing.demo.template_comparison import main, template_t1_in_truth, write_template_comparison


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    build_demo_cohort(folder, 2, "small", seed=11, workers=1, progress=False)
    return folder


def _truth(cohort, subject, name):
    return np.asarray(nib.load(str(cohort / "truth" / subject / f"{name}.nii.gz")).dataobj, dtype=np.float32)


def test_template_lands_on_the_subject_it_was_deformed_into(cohort):
    labels = _truth(cohort, "demo002", "labels")
    brain = np.isin(labels, (GREY_MATTER, WHITE_MATTER, VENTRICLE))
    t1 = _truth(cohort, "demo002", "t1")
    own = template_t1_in_truth("small", 11, 1)
    other = template_t1_in_truth("small", 11, 0)
    assert own.shape == t1.shape
    # The template T1 and the physics T1 share the anatomy voxel for voxel only under the same deformation.
    assert np.corrcoef(own[brain], t1[brain])[0, 1] > 0.9
    assert np.corrcoef(other[brain], t1[brain])[0, 1] < 0.8


def test_figure_is_written_and_bad_requests_are_refused(cohort, tmp_path, capsys):
    output = write_template_comparison(cohort, "demo001", tmp_path / "figure.png")
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no subject 'demo009'"):
        write_template_comparison(cohort, "demo009", tmp_path / "other.png")
    procedural = tmp_path / "procedural"
    procedural.mkdir()
    manifest = json.loads((cohort / "manifest.json").read_text()) | {"anatomy": "procedural"}
    (procedural / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit) as exit_info:
        main(["--cohort", str(procedural), "--output", str(tmp_path / "p.png")])
    assert exit_info.value.code == 2
    assert "not an mni152 demo cohort" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()
