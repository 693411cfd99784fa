"""Tests of ANTs registration on small (48^3) synthetic heads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medgan_common.errors import PreprocessingError
from preprocessing import registration
from preprocessing.registration import (
    RegistrationConfig,
    RegistrationResult,
    ants_to_sitk,
    apply_transforms,
    _stage_arguments,
    choose_reference,
    most_similar,
    reference_comparisons,
    configure_determinism,
    map_fixed_points_to_moving,
    normalized_cross_correlation,
    register,
    register_within_subject,
    save_transforms,
    sitk_to_ants,
)

REPOSITORY = Path(__file__).resolve().parents[2]
SIZE = 48
SPACING = 1.5
# Few iterations and levels suited to 48^3 volumes; the defaults target 256x256x150.
FAST = RegistrationConfig(
    linear_iterations=(100, 50), linear_shrink_factors=(4, 2), linear_smoothing_sigmas=(2, 1),
    syn_iterations=(40, 20, 10), syn_shrink_factors=(4, 2, 1), syn_smoothing_sigmas=(2, 1, 0),
)


def head(seed: int = 0, size: int = SIZE) -> sitk.Image:
    """A textured ellipsoidal head with a bright rim (scalp), centred on the physical origin."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(size, dtype=float) - (size - 1) / 2,) * 3, indexing="ij")
    radius = np.sqrt((x / (0.40 * size)) ** 2 + (y / (0.45 * size)) ** 2 + (z / (0.36 * size)) ** 2)
    texture = ndimage.gaussian_filter(rng.normal(size=radius.shape), 2.0)
    texture /= texture.std()
    array = np.where(radius < 1, 100 + 25 * texture, 0) + np.where((radius > 0.85) & (radius < 1), 80, 0)
    image = sitk.GetImageFromArray(ndimage.gaussian_filter(array, 0.7).astype(np.float32))
    image.SetSpacing((SPACING,) * 3)
    image.SetOrigin((-(size - 1) / 2 * SPACING,) * 3)
    return image


def known_motion(image: sitk.Image, warp_mm: float = 1.0, seed: int = 1) -> sitk.Transform:
    """A rigid offset (about 5 degrees, 5 mm = 3.3 voxels) composed with a mild smooth warp."""
    rigid = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.06, -0.04, 0.08, (4.0, -2.5, 3.0))
    warp = sitk.BSplineTransformInitializer(image, [3, 3, 3])
    warp.SetParameters(np.random.default_rng(seed).normal(scale=warp_mm, size=len(warp.GetParameters())).tolist())
    return sitk.CompositeTransform([rigid, warp])


def moved(image: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """``moved(p) = image(transform(p))``: the moving point p shows the fixed point transform(p)."""
    return sitk.Resample(image, image, transform, sitk.sitkLinear, 0.0)


def array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


@pytest.fixture(scope="module")
def pair():
    fixed = head()
    motion = known_motion(fixed)
    return fixed, moved(fixed, motion), motion


@pytest.fixture(scope="module")
def result(pair):
    fixed, moving, _ = pair
    with register(moving, fixed, FAST) as output:
        yield output


# --- conversions ---------------------------------------------------------------------------------

def test_sitk_ants_round_trip_keeps_lps_geometry_and_negative_values():
    import ants

    values = np.random.default_rng(0).integers(-1024, 2000, size=(5, 6, 7)).astype(np.int16)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.5, 0.7, 1.25))
    image.SetOrigin((-12.345678901, 100.1, 3.3))
    image.SetDirection(sitk.VersorTransform((0.3, 0.2, 0.1), 0.7).GetMatrix())

    converted = sitk_to_ants(image)
    assert converted.pixeltype == "float" and converted.shape == (7, 6, 5)
    assert converted.origin == image.GetOrigin() and converted.spacing == image.GetSpacing()
    assert tuple(converted.direction.ravel()) == image.GetDirection()
    # The same voxel is at the same LPS point in both libraries (x, y, z index order in both).
    for index in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
        np.testing.assert_allclose(
            ants.transform_index_to_physical_point(converted, index),
            image.TransformIndexToPhysicalPoint(index), atol=1e-9)
        assert converted[index] == values[index[::-1]]

    back = ants_to_sitk(converted)
    np.testing.assert_array_equal(array(back), values.astype(np.float32))
    assert back.GetOrigin() == image.GetOrigin()
    assert back.GetSpacing() == image.GetSpacing()
    assert back.GetDirection() == image.GetDirection()


@pytest.mark.parametrize("pixel, ants_type", [
    (sitk.sitkUInt8, "unsigned char"), (sitk.sitkUInt16, "unsigned int"), (sitk.sitkFloat64, "float"),
])
def test_sitk_to_ants_pixel_types(pixel, ants_type):
    image = sitk.Cast(sitk.GetImageFromArray(np.arange(27, dtype=np.uint8).reshape(3, 3, 3)), pixel)
    converted = sitk_to_ants(image)
    assert converted.pixeltype == ants_type
    np.testing.assert_array_equal(array(ants_to_sitk(converted)), np.arange(27).reshape(3, 3, 3))


# --- similarity ----------------------------------------------------------------------------------

def test_normalized_cross_correlation_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 7, 8))
    assert normalized_cross_correlation(a, 3 * a + 2) == pytest.approx(1.0)
    assert normalized_cross_correlation(a, -a) == pytest.approx(-1.0)
    b = a.copy()
    b[:3] = rng.normal(size=b[:3].shape)
    mask = np.zeros(a.shape, bool)
    mask[3:] = True
    assert normalized_cross_correlation(a, b, mask) == pytest.approx(1.0)
    assert normalized_cross_correlation(a, b) < 0.9
    assert np.isnan(normalized_cross_correlation(np.ones(4), np.arange(4)))
    with pytest.raises(ValueError, match="same shape"):
        normalized_cross_correlation(a, a[0])
    with pytest.raises(ValueError, match="no voxel"):
        normalized_cross_correlation(a, a, np.zeros(a.shape, bool))


# --- registration --------------------------------------------------------------------------------

def test_registration_raises_ncc(result):
    assert result.metrics["ncc_before"] < 0.75
    assert result.metrics["ncc_after"] > 0.97
    assert result.metrics["seconds"] > 0
    warped = result.warped
    assert warped.GetSize() == (SIZE,) * 3 and warped.GetPixelID() == sitk.sitkFloat32


def test_registration_recovers_the_known_motion(pair, result):
    fixed, _, motion = pair
    # Moving points inside the head, and the fixed points they show.
    grid = np.stack(np.meshgrid(*(np.linspace(-12, 12, 3),) * 3, indexing="ij"), -1).reshape(-1, 3)
    moving_points = grid * SPACING
    fixed_points = np.array([motion.TransformPoint(tuple(p)) for p in moving_points])
    before = np.linalg.norm(fixed_points - moving_points, axis=1) / SPACING
    after = np.linalg.norm(map_fixed_points_to_moving(fixed_points, result) - moving_points, axis=1) / SPACING
    assert before.mean() > 3.0
    assert after.max() < 2.0 and after.mean() < 1.0


def test_transforms_are_saved_under_stable_names_and_reproduce_the_warped_image(pair, tmp_path):
    fixed, moving, _ = pair
    output = register(moving, fixed, FAST)
    workdir = Path(output.workdir.name)
    assert all(Path(f).is_file() for f in output.forward_transforms + output.inverse_transforms)
    saved = save_transforms(output, tmp_path / "subject", prefix="t1_to_ref_")

    assert not workdir.exists() and output.workdir is None
    assert [Path(f).name for f in saved.forward_transforms] == ["t1_to_ref_1Warp.nii.gz", "t1_to_ref_0GenericAffine.mat"]
    assert [Path(f).name for f in saved.inverse_transforms] == ["t1_to_ref_0GenericAffine.mat", "t1_to_ref_1InverseWarp.nii.gz"]
    assert saved.inverse_invert_flags == [True, False]
    manifest = json.loads((tmp_path / "subject" / "t1_to_ref_transforms.json").read_text())
    assert manifest["forward_transforms"] == [Path(f).name for f in saved.forward_transforms]
    assert manifest["metrics"]["ncc_after"] == pytest.approx(output.metrics["ncc_after"])
    assert sorted(p.name for p in (tmp_path / "subject").iterdir()) == sorted(
        ["t1_to_ref_1Warp.nii.gz", "t1_to_ref_0GenericAffine.mat", "t1_to_ref_1InverseWarp.nii.gz", "t1_to_ref_transforms.json"])

    again = apply_transforms(moving, fixed, saved.forward_transforms, "linear")
    np.testing.assert_array_equal(array(again), array(output.warped))
    # The inverse transforms bring the fixed image back onto the moving grid.
    back = apply_transforms(fixed, moving, saved.inverse_transforms, "linear", saved.inverse_invert_flags)
    assert normalized_cross_correlation(array(back), array(moving)) > 0.97


def test_apply_transforms_to_a_label_map_keeps_labels(result, pair):
    fixed, moving, _ = pair
    labels = sitk.Cast(sitk.BinaryThreshold(moving, 50.0, 1e9, 2, 0), sitk.sitkUInt8)
    for interpolator in ("genericLabel", "nearestNeighbor"):
        out = apply_transforms(labels, fixed, result.forward_transforms, interpolator)
        assert out.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(array(out))) == {0, 2}
    warped_mask = array(apply_transforms(labels, fixed, result.forward_transforms, "genericLabel")) > 0
    fixed_mask = array(fixed) > 50.0
    assert (warped_mask & fixed_mask).sum() / (warped_mask | fixed_mask).sum() > 0.9


def test_apply_transforms_errors(result, pair, tmp_path):
    fixed, moving, _ = pair
    with pytest.raises(ValueError, match="interpolator"):
        apply_transforms(moving, fixed, result.forward_transforms, "cubic")
    with pytest.raises(PreprocessingError, match="transform file does not exist") as caught:
        apply_transforms(moving, fixed, [tmp_path / "missing.mat"])
    assert caught.value.path == str(tmp_path / "missing.mat")
    with pytest.raises(ValueError, match="invert_flags"):
        apply_transforms(moving, fixed, result.forward_transforms, invert_flags=[False])


def test_default_value_fills_outside_the_moving_image(pair):
    fixed, moving, _ = pair
    shifted = sitk.Image(moving)
    shifted.SetOrigin(tuple(o + 20.0 for o in moving.GetOrigin()))
    config = FAST.replace(transforms=("Rigid",), initialization="identity", default_value=-1000.0,
                          linear_iterations=(0, 0))
    with register(shifted, fixed, config) as output:
        warped = array(output.warped)
    assert warped[0, 0, 0] == -1000.0 and warped[-1, -1, -1] != -1000.0


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Point Python's temporary folder (used by the module and by ANTsPy) at an empty folder."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.mark.parametrize("config", [FAST.replace(transforms=("Rigid", "SyN"), syn_iterations=(10, 5, 0)),
                                    FAST.replace(transforms="QuickRigid")])
def test_no_temporary_files_remain(pair, private_tmp, tmp_path, config):
    fixed, moving, _ = pair
    output = register(moving, fixed, config)
    assert list(private_tmp.iterdir())  # ANTs' transform files live there until saved
    save_transforms(output, tmp_path / "saved")
    assert list(private_tmp.iterdir()) == []
    assert (tmp_path / "saved" / "to_reference_0GenericAffine.mat").is_file()

    with register(moving, fixed, config):
        pass
    assert list(private_tmp.iterdir()) == []


def test_temporary_files_are_removed_when_registration_fails(pair, private_tmp, monkeypatch):
    fixed, moving, _ = pair

    def failing(*args, **kwargs):
        raise RuntimeError("resampling failed")

    monkeypatch.setattr(registration, "apply_transforms", failing)
    with pytest.raises(RuntimeError, match="resampling failed"):
        register(moving, fixed, FAST.replace(transforms=("Rigid",)))
    assert list(private_tmp.iterdir()) == []


def test_register_rejects_bad_images(pair):
    fixed, moving, _ = pair
    broken = sitk.GetImageFromArray(np.full((4, 4, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="moving image contains NaN"):
        register(broken, fixed, FAST)
    with pytest.raises(ValueError, match="2D but fixed image is 3D"):
        register(sitk.Image(4, 4, sitk.sitkFloat32), fixed, FAST)


def test_within_subject_rigid_registration_across_contrasts():
    t1 = head(seed=3)
    # A T2-like contrast: bright background-free inverse of the tissue intensities.
    t1_array = array(t1)
    t2_array = np.where(t1_array > 5, 220.0 - t1_array, 0.0).astype(np.float32)
    t2 = sitk.GetImageFromArray(t2_array)
    t2.CopyInformation(t1)
    rigid = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.05, 0.03, -0.06, (3.0, 2.0, -3.5))
    t2_moved = moved(t2, rigid)
    config = FAST.replace(linear_iterations=(200, 100, 50), linear_shrink_factors=(4, 2, 1), linear_smoothing_sigmas=(2, 1, 0))
    with register_within_subject(t2_moved, t1, config) as output:
        assert [Path(f).name for f in output.forward_transforms] == ["0GenericAffine.mat"]
        points = np.array([[10.0, -8.0, 5.0], [-12.0, 6.0, -4.0], [0.0, 0.0, 0.0]])
        truth = np.array([rigid.GetInverse().TransformPoint(tuple(p)) for p in points])
        error = np.linalg.norm(map_fixed_points_to_moving(points, output) - truth, axis=1) / SPACING
    assert error.max() < 0.5


# --- determinism ---------------------------------------------------------------------------------

DETERMINISM_SCRIPT = textwrap.dedent("""
    import hashlib, sys
    from preprocessing.registration import configure_determinism
    configure_determinism(seed=7, threads=1)  # before anything imports ants
    import SimpleITK as sitk
    sys.path.insert(0, {tests!r})
    from test_registration import FAST, head, known_motion, moved
    from preprocessing.registration import register
    fixed = head(size=32)
    moving = moved(fixed, known_motion(fixed))
    config = FAST.replace(syn_iterations=(20, 10, 5))
    digests = []
    for _ in range(2):
        with register(moving, fixed, config) as result:
            digests.append(hashlib.sha256(sitk.GetArrayViewFromImage(result.warped).tobytes()).hexdigest())
    print(" ".join(digests))
""")


def test_deterministic_mode_gives_byte_identical_output():
    script = DETERMINISM_SCRIPT.format(tests=str(Path(__file__).parent))
    environment = {k: v for k, v in os.environ.items() if k not in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "ANTS_RANDOM_SEED")}
    environment["PYTHONPATH"] = str(REPOSITORY)
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment,
                           cwd=REPOSITORY, timeout=120) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    digests = [run.stdout.split() for run in runs]
    assert len(digests[0]) == 2
    assert digests[0][0] == digests[0][1] == digests[1][0] == digests[1][1]


def test_configure_determinism_sets_the_environment(monkeypatch):
    # Registered with monkeypatch so that the values set below are undone after the test.
    monkeypatch.setenv("ANTS_RANDOM_SEED", "0")
    monkeypatch.setenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        import ants  # noqa: F401  (already imported by the other tests: the warning must say so)

        with pytest.warns(RuntimeWarning, match="before importing|after 'ants' was imported"):
            configure_determinism(seed=11, threads=1)
        assert os.environ["ANTS_RANDOM_SEED"] == "11"
        assert os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == "1"
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    with pytest.raises(ValueError, match="at least 1"):
        configure_determinism(threads=0)


# --- reference selection -------------------------------------------------------------------------

def test_choose_reference_picks_the_volume_most_similar_to_the_others():
    base = head(seed=5)
    images = {
        "centre": base,
        "warped_a": moved(base, known_motion(base, warp_mm=2.5, seed=11)),
        "warped_b": moved(base, known_motion(base, warp_mm=2.5, seed=12)),
        "other_head": head(seed=6),
    }
    assert choose_reference(images, RegistrationConfig(reference_spacing_mm=3.0)) == "centre"


@pytest.mark.parametrize("spacing, shrink, sigmas", [(1.0, "8x4x2", "3x2x1mm"), (4.0, "2x1x1", "3x2x1mm"),
                                                     (0.9, "9x4x2", "3x2x1mm")])
def test_levels_in_millimetres_give_each_resolution_its_shrink_factors(spacing, shrink, sigmas):
    config = RegistrationConfig(level_unit="mm", syn_shrink_factors=(8, 4, 2), syn_smoothing_sigmas=(3, 2, 1))
    arguments = _stage_arguments("SyN", "fixed", "moving", config, spacing_mm=spacing)
    assert arguments[arguments.index("--shrink-factors") + 1] == shrink
    assert arguments[arguments.index("--smoothing-sigmas") + 1] == sigmas
    voxels = _stage_arguments("SyN", "fixed", "moving", config.replace(level_unit="voxels"), spacing_mm=spacing)
    assert voxels[voxels.index("--shrink-factors") + 1] == "8x4x2"
    assert voxels[voxels.index("--smoothing-sigmas") + 1] == "3x2x1vox"
    with pytest.raises(ValueError, match="level_unit"):
        RegistrationConfig(level_unit="inches")


def test_reference_comparisons_are_unique_and_grow_linearly():
    names = [f"s{i:02d}" for i in range(30)]
    pairs = reference_comparisons(names, max_comparisons=4)
    assert len(pairs) == len(set(pairs)) and all(a < b for a, b in pairs)
    assert len(pairs) <= 30 * 4 and all(sum(name in pair for pair in pairs) >= 4 for name in names)
    assert reference_comparisons(["b", "a", "c"], 12) == [("a", "b"), ("a", "c"), ("b", "c")]


def test_most_similar_takes_the_best_mean_and_breaks_ties_by_name():
    similarity = {("a", "b"): 0.5, ("a", "c"): 0.6, ("b", "c"): 0.9}
    assert most_similar(["a", "b", "c"], similarity) == "c"  # c: 0.75, b: 0.7, a: 0.55
    assert most_similar(["b", "a"], {("a", "b"): 0.8}) == "a"


def test_choose_reference_given_by_name_or_file(tmp_path):
    images = {"a": head(seed=1), "b": head(seed=2)}
    assert choose_reference(images, RegistrationConfig(reference="b")) == "b"
    path = tmp_path / "atlas.nii.gz"
    sitk.WriteImage(images["a"], str(path))
    assert choose_reference(images, RegistrationConfig(reference=str(path))) == str(path)
    with pytest.raises(PreprocessingError, match="neither a volume name nor an existing file") as caught:
        choose_reference(images, RegistrationConfig(reference=str(tmp_path / "missing.nii.gz")))
    assert caught.value.path == str(tmp_path / "missing.nii.gz")
    assert choose_reference({"only": images["a"]}) == "only"
    with pytest.raises(ValueError, match="no image"):
        choose_reference({})


# --- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"transforms": ("Rigid", "Warp")}, "unknown transform stage"),
    ({"transforms": ()}, "at least one stage"),
    ({"metric": "NMI"}, "metric must be one of"),
    ({"sampling": "Dense"}, "sampling must be one of"),
    ({"syn_iterations": (10, 5), "syn_shrink_factors": (4, 2, 1)}, "same length"),
    ({"linear_shrink_factors": (0, 1), "linear_iterations": (1, 1), "linear_smoothing_sigmas": (0, 0)}, ">= 1"),
    ({"initialization": "moments"}, "initialization must be"),
    ({"winsorize": (0.9, 0.1)}, "winsorize"),
])
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        RegistrationConfig(**changes)


def test_config_from_dict():
    config = RegistrationConfig.from_dict({"transforms": ["Rigid", "Affine", "SyN"], "syn_metric": "CC",
                                           "syn_iterations": [20, 10], "syn_shrink_factors": [2, 1],
                                           "syn_smoothing_sigmas": [1, 0]})
    assert config.transforms == ("Rigid", "Affine", "SyN") and config.syn_iterations == (20, 10)
    assert RegistrationConfig.from_dict({"transforms": "antsRegistrationSyNQuick[s]"}).transforms == "antsRegistrationSyNQuick[s]"
    with pytest.raises(ValueError, match="unknown registration option"):
        RegistrationConfig.from_dict({"iterations": [1]})


def test_cc_metric_and_affine_stage_register(pair):
    fixed, moving, _ = pair
    config = FAST.replace(transforms=("Rigid", "Affine", "SyN"), syn_metric="CC", metric="MeanSquares",
                          histogram_matching=True, sampling="Random", syn_iterations=(20, 10),
                          syn_shrink_factors=(4, 2), syn_smoothing_sigmas=(2, 1))
    with register(moving, fixed, config) as output:
        assert output.metrics["ncc_after"] > 0.95
        assert isinstance(output, RegistrationResult) and len(output.forward_transforms) == 2
