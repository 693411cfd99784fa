"""The CT registered onto its subject's own MR (preprocessing/runner/steps/pair_ct.py), on a synthetic head."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medgan_common.errors import GeometryError
from preprocessing.config import ct_pairing_config, load_config
from preprocessing.demo.anatomy import AIR, CORTICAL_BONE, HeadParameters, build_labels
from preprocessing.demo.grid import Grid
from preprocessing.registration import map_fixed_points_to_moving
from preprocessing.runner.demo_truth import grid_image
from preprocessing.runner.imaging import check_one_grid, warp
from preprocessing.runner.steps.pair_ct import register_ct_to_mr

SPACING = 4.0
#: Per label (air, scalp, fat, cortical bone, CSF, grey and white matter, ventricles, diploë): CT in
#: HU, and a T2-weighted MR: bone dark where the CT is brightest, CSF bright where the CT is darkest,
#: so no linear map relates the two and only a multi-modal metric can align them.
CT_HU = np.array([-1000, 45, -95, 1450, 8, 40, 27, 8, 550], np.float32)
MR_T2 = np.array([0, 228, 459, 0, 1350, 494, 353, 1350, 229], np.float32)


@pytest.fixture(scope="module")
def head():
    """Labels of a procedural head on a 48 x 56 x 52 grid of 4 mm voxels, its CT and its MR (same anatomy, same grid)."""
    grid = Grid.centred((48, 56, 52), (SPACING,) * 3)
    labels = build_labels(grid, HeadParameters(), np.random.default_rng(0))
    rng = np.random.default_rng(1)

    def image(values: np.ndarray, noise: float) -> sitk.Image:
        blurred = ndimage.gaussian_filter(values[labels], 0.6)  # partial volume at the tissue edges
        return grid_image((blurred + rng.normal(0.0, noise, labels.shape)).astype(np.float32), grid)

    return grid_image(labels, grid), image(CT_HU, 5.0), image(MR_T2, 20.0)


def test_ct_registration_onto_own_mr_recovers_a_known_rigid_motion(head):
    """Rotations of 5.7, 3.4 and 4.6 degrees and a translation of 8.8 mm: every head voxel's displacement
    is recovered to within half a voxel, a quarter on average (measured: 0.14 and 0.06)."""
    labels, ct, mr = head
    centre = ct.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in ct.GetSize()])
    motion = sitk.Euler3DTransform(centre, 0.10, -0.06, 0.08, (6.0, -5.0, 4.0))
    # moved(p) = ct(motion(p)): the moved CT shows at p the anatomy the MR shows at motion(p).
    moved = sitk.Resample(ct, ct, motion, sitk.sitkLinear, -1000.0)
    # The demo configuration's parameters (levels in mm, for its 4 mm volumes), rigid as by default.
    config = ct_pairing_config(load_config({"extends": "demo", "ct_pairing": {"registration": {"transforms": ["Rigid"]}}}))
    assert config.transforms == ("Rigid",) and config.metric == "MI" and config.default_value == -1024.0
    result = register_ct_to_mr(moved, mr, config)

    head_voxels = np.argwhere(sitk.GetArrayViewFromImage(labels) != AIR)[::5]
    points = np.array([mr.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]]) for index in head_voxels])
    truth = np.array([motion.GetInverse().TransformPoint(tuple(p)) for p in points])
    before = np.linalg.norm(points - truth, axis=1) / SPACING
    after = np.linalg.norm(map_fixed_points_to_moving(points, result) - truth, axis=1) / SPACING
    assert before.mean() > 2.5
    assert after.mean() < 0.25 and after.max() < 0.5, (after.mean(), after.max())
    assert result.metrics["nmi_after"] > result.metrics["nmi_before"] + 0.03

    # Resampled through the recovered transform, the CT is the unmoved CT again, as close to it as
    # resampling through the true inverse motion brings it (both interpolate the moved CT once more,
    # which blurs the 4 mm bone edges).
    paired = sitk.GetArrayFromImage(warp(moved, mr, list(result.forward_transforms), "linear", -1024.0))
    ideal = sitk.GetArrayFromImage(sitk.Resample(moved, mr, motion.GetInverse(), sitk.sitkLinear, -1024.0))
    original, label_array = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(labels)
    inside = ndimage.binary_erosion(label_array != AIR, iterations=2)
    error = {name: np.abs(volume - original)[inside].mean()
             for name, volume in (("before", sitk.GetArrayFromImage(moved)), ("after", paired), ("ideal", ideal))}
    assert error["after"] < 1.05 * error["ideal"] and error["after"] < 0.3 * error["before"], error
    # The skull lands on the MR's skull (dark in the MR: only the registration puts it there).
    bone = label_array == CORTICAL_BONE
    bone_error = {name: np.median(np.abs(volume - ideal)[bone]) for name, volume in
                  (("before", sitk.GetArrayFromImage(moved)), ("after", paired))}
    assert bone_error["after"] < 25 and bone_error["before"] > 200, bone_error


def test_ct_and_mr_delivered_paired_must_share_one_grid(head, tmp_path):
    _, ct, mr = head
    why = "ct_pairing.register false needs the CT and the MR on one grid"
    check_one_grid(ct, mr, tmp_path / "s1" / "ct.nii.gz", tmp_path / "s1" / "mr.nii.gz", why)
    nudged = sitk.Image(mr)
    nudged.SetOrigin(tuple(o + d for o, d in zip(mr.GetOrigin(), (0.0, 0.0, 0.0005))))
    check_one_grid(ct, nudged, "ct.nii.gz", "mr.nii.gz", why)  # float32 header rounding is far below this
    shifted = sitk.Image(mr)
    shifted.SetOrigin(tuple(o + d for o, d in zip(mr.GetOrigin(), (0.0, 2.0, 0.0))))
    with pytest.raises(GeometryError, match=r"ct\.nii\.gz: not on the grid of the subject's mr\.nii\.gz: origin .* "
                                            r"\(by up to 2, tolerance 0\.001\); ct_pairing") as error:
        check_one_grid(ct, shifted, tmp_path / "s1" / "ct.nii.gz", tmp_path / "s1" / "mr.nii.gz", why)
    assert error.value.path == str(tmp_path / "s1" / "ct.nii.gz")
    with pytest.raises(GeometryError, match=r"size \[48, 56, 52\] differs from \[48, 56, 51\]"):
        check_one_grid(ct, sitk.Extract(mr, [48, 56, 51], [0, 0, 0]), "ct.nii.gz", "mr.nii.gz", why)
