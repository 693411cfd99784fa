"""Volume inference with a 2D generator (modality_translation/inference/translate.py, io.py, datalist_translation.py)."""

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.inferers import Inferer
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, Orientationd, SaveImaged
from scipy import ndimage
from torch import nn

from medgan_common.errors import GeometryError, InputReadError, PreprocessingError
from modality_translation.inference import (
    IntensityMismatchError,
    VolumeSliceInferer,
    VolumeTranslator,
    load_network_weights,
    read_volume,
    translate_datalist,
    translate_slices,
)
from modality_translation.inference.io import check_files_on_grid
from modality_translation.networks import ResNetGenerator, WeightsFileError
from preprocessing.normalization import percentile_normalize
from preprocessing.windowing import CTWindowd

# File voxel axes (i, j, k) -> RAS: i runs towards Superior, j towards Left (-R), k towards Posterior (-A),
# so the canonical [z, y, x] array is a permutation and flip of the file's; spacings all differ.
PERMUTED_ANISOTROPIC = np.array([[0.0, -1.5, 0.0, 12.0], [0.0, 0.0, -2.0, 30.0], [3.0, 0.0, 0.0, -40.0], [0, 0, 0, 1]])
# k runs towards Anterior here (a flip of canonical P), and L and P are both 1.5 mm: slices need no
# resampling at 32 x 32.
PERMUTED_ISOTROPIC_IN_PLANE = np.array([[0.0, -1.5, 0.0, 12.0], [0.0, 0.0, 1.5, 30.0], [3.0, 0.0, 0.0, -40.0], [0, 0, 0, 1]])


def _oblique_affine():
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.2, 0.9, 2.5])
    affine[:3, 3] = [-20.0, 15.0, 7.0]
    return affine


def _head(seed=0, shape=(32, 32, 32), noise=5.0):
    """MR-like volume (file voxel order) with a head ellipsoid and smooth contrast; and its mask."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    c = [(n - 1) / 2 for n in shape]
    head = ((i - c[0]) / 12) ** 2 + ((j - c[1]) / 11) ** 2 + ((k - c[2]) / 10) ** 2 < 1
    volume = np.abs(rng.normal(0, noise, shape)) + 1.0
    volume[head] += 300 + 150 * np.sin(j[head] / 4.0) + 100 * np.cos(k[head] / 5.0)
    return volume.astype(np.float32), head


def _save(path, array, affine):
    image = nib.Nifti1Image(np.asarray(array), affine)
    image.header.set_qform(affine, code=1)
    nib.save(image, path)
    return path


def _tiny_generator():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1), nn.Tanh())


def _identity_translator(source, target, **kwargs):
    return VolumeTranslator(nn.Identity(), source, target, slice_size=32, device="cpu", **kwargs)


@pytest.mark.parametrize("affine", [PERMUTED_ANISOTROPIC, _oblique_affine()], ids=["permuted", "oblique"])
def test_output_has_exactly_the_input_geometry(tmp_path, affine):
    volume, head = _head(shape=(32, 30, 28))
    source = _save(tmp_path / "t1.nii.gz", volume, affine)
    translator = VolumeTranslator(_tiny_generator(), "t1", "t2", slice_size=32, batch_size=7, device="cpu")
    output = translator.translate_file(source, tmp_path / "out" / "t2.nii.gz")
    written, original = nib.load(output), nib.load(source)
    assert written.shape == original.shape
    np.testing.assert_array_equal(written.affine, original.affine)
    np.testing.assert_array_equal(written.header.get_qform(), original.header.get_qform())
    np.testing.assert_array_equal(written.header.get_sform(), original.header.get_sform())
    assert written.header.get_data_dtype() == np.float32
    itk_written, itk_original = sitk.ReadImage(str(output)), sitk.ReadImage(str(source))
    assert itk_written.GetSize() == itk_original.GetSize()
    assert itk_written.GetSpacing() == itk_original.GetSpacing()
    assert itk_written.GetOrigin() == itk_original.GetOrigin()
    assert itk_written.GetDirection() == itk_original.GetDirection()
    data = written.get_fdata()
    assert np.isfinite(data).all() and -1.0 <= data.min() < data.max() <= 1.0
    assert not list(output.parent.glob(".tmp-*"))


def test_identity_network_on_mr_returns_the_normalised_input_in_the_file_voxel_order(tmp_path):
    volume, head = _head(1)
    source = _save(tmp_path / "t1.nii.gz", volume, PERMUTED_ISOTROPIC_IN_PLANE)
    mask = _save(tmp_path / "t1_mask.nii.gz", head.astype(np.uint8), PERMUTED_ISOTROPIC_IN_PLANE)
    output = _identity_translator("t1", "t1").translate_file(source, tmp_path / "out.nii.gz", mask)
    expected = percentile_normalize(volume, head, outside_value=-1.0)
    np.testing.assert_allclose(nib.load(output).get_fdata(), expected, atol=1e-6)
    # The canonical array [S, P, L] is the file's [i (S), k (A), j (L)], flipped along A.
    canonical = read_volume(source)
    assert canonical.array.shape == (32, 32, 32) and canonical.spacing == (1.5, 1.5, 3.0)
    np.testing.assert_array_equal(canonical.array, np.flip(volume.transpose(0, 2, 1), axis=1))


def test_resampled_slices_come_back_close_to_the_input(tmp_path):
    volume, head = _head(2, noise=0.0)
    source = _save(tmp_path / "t1.nii.gz", volume, PERMUTED_ANISOTROPIC)
    mask = _save(tmp_path / "m.nii.gz", head.astype(np.uint8), PERMUTED_ANISOTROPIC)
    # In-plane 1.5 x 2 mm pixels: padded to a square in mm and resized to 48 x 48 and back.
    translator = VolumeTranslator(nn.Identity(), "t1", "t1", slice_size=48, device="cpu")
    output = nib.load(translator.translate_file(source, tmp_path / "out.nii.gz", mask)).get_fdata()
    expected = percentile_normalize(volume, head, outside_value=-1.0)
    # Interpolation blurs the sharp edge of the head; inside, the round trip is close to exact.
    interior = ndimage.binary_erosion(head, iterations=2)
    assert np.abs(output - expected)[interior].mean() < 0.02
    assert np.corrcoef(output.ravel(), expected.ravel())[0, 1] > 0.98


def test_identity_network_on_ct_returns_hu_exactly_inside_the_window(tmp_path):
    rng = np.random.default_rng(3)
    hu = rng.uniform(-1000, 2000, (32, 32, 24)).astype(np.float32)
    source = _save(tmp_path / "ct.nii.gz", hu, PERMUTED_ISOTROPIC_IN_PLANE)
    translator = _identity_translator("ct", "ct", source_intensity={"window": [400, 1800]},
                                      target_intensity={"window": [400, 1800]})
    output = nib.load(translator.translate_file(source, tmp_path / "sct.nii.gz")).get_fdata()
    inside = (hu >= -500) & (hu <= 1300)
    np.testing.assert_allclose(output[inside], hu[inside], atol=1e-3)
    np.testing.assert_array_equal(output[~inside], np.clip(hu[~inside], -500, 1300))


def test_simpleitk_images_keep_their_geometry_and_match_the_file_path(tmp_path):
    volume, head = _head(4)
    source = _save(tmp_path / "t2.nii.gz", volume, PERMUTED_ANISOTROPIC)
    translator = VolumeTranslator(_tiny_generator(), "t2", "ct", slice_size=32, device="cpu")
    image = sitk.ReadImage(str(source))
    mask = sitk.GetImageFromArray(head.transpose(2, 1, 0).astype(np.uint8))
    mask.CopyInformation(image)
    result = translator.translate_image(image, mask)
    assert (result.GetSize(), result.GetSpacing(), result.GetOrigin(), result.GetDirection()) == (
        image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    mask_path = _save(tmp_path / "m.nii.gz", head.astype(np.uint8), PERMUTED_ANISOTROPIC)
    from_file = sitk.ReadImage(str(translator.translate_file(source, tmp_path / "sct.nii.gz", mask_path)))
    np.testing.assert_allclose(sitk.GetArrayFromImage(result), sitk.GetArrayFromImage(from_file), atol=1e-4)
    hu = sitk.GetArrayFromImage(result)  # CT output in HU of the default brain window [0, 80]
    assert hu.min() >= 0.0 and hu.max() <= 80.0
    shifted = sitk.Image(mask)
    shifted.SetOrigin([o + 5.0 for o in mask.GetOrigin()])
    with pytest.raises(GeometryError, match="different grids"):
        translator.translate_image(image, shifted)


def test_weights_files_and_checkpoint_entries(tmp_path):
    trained = _tiny_generator()
    with torch.no_grad():
        trained[0].bias.fill_(0.25)
    torch.save(trained.state_dict(), tmp_path / "generator.pt")
    torch.save({"generator_ab": trained.state_dict(), "epoch": torch.tensor(3)}, tmp_path / "checkpoint.pt")
    for weights, key in ((tmp_path / "generator.pt", None), (tmp_path / "checkpoint.pt", "generator_ab")):
        network = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1), nn.Tanh())
        VolumeTranslator(network, "t1", "t2", weights=weights, weights_key=key, device="cpu")
        assert torch.equal(network[0].bias, torch.full((4,), 0.25))
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        VolumeTranslator(_tiny_generator(), "t1", "t2", weights=tmp_path / "missing.pt", device="cpu")
    with pytest.raises(WeightsFileError, match=r"has no entry 'generator_ba'; it holds \['epoch', 'generator_ab'\]"):
        load_network_weights(_tiny_generator(), tmp_path / "checkpoint.pt", "generator_ba")
    with pytest.raises(WeightsFileError, match="missing keys"):
        load_network_weights(nn.Sequential(*_tiny_generator(), nn.Conv2d(1, 1, 1)), tmp_path / "generator.pt")


def test_bf16_autocast_and_a_network_of_the_wrong_output_shape():
    volume = np.random.default_rng(5).uniform(-1, 1, (6, 32, 32)).astype(np.float32)
    network = _tiny_generator()
    full = translate_slices(network, volume, (1.0, 1.0, 1.0), slice_size=32, batch_size=4)
    half = translate_slices(network, volume, (1.0, 1.0, 1.0), slice_size=32, batch_size=4, amp=True)
    assert half.dtype == np.float32 and np.abs(half - full).max() < 0.05
    with pytest.raises(ValueError, match=r"the network returned shape \(4, 4, 32, 32\).*expected \(4, 1, 32, 32\)"):
        translate_slices(nn.Conv2d(1, 4, 1), volume, (1.0, 1.0, 1.0), slice_size=32, batch_size=4)


def test_volume_slice_inferer_for_monai_evaluators():
    volume = np.random.default_rng(6).uniform(-1, 1, (2, 1, 30, 32, 20)).astype(np.float32)
    affine = torch.diag(torch.tensor([1.0, 1.0, 2.5, 1.0], dtype=torch.float64))
    inputs = MetaTensor(torch.from_numpy(volume), affine=affine)
    inferer = VolumeSliceInferer(slice_size=32, batch_size=8)
    assert isinstance(inferer, Inferer)
    network = _tiny_generator()
    output = inferer(inputs, network)
    assert isinstance(output, MetaTensor) and output.shape == inputs.shape
    assert torch.equal(output.affine, inputs.affine)
    # The same as translating each volume's [z, y, x] transpose.
    expected = translate_slices(network, volume[1, 0].T, (1.0, 1.0, 2.5), slice_size=32).T
    np.testing.assert_allclose(output[1, 0].numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="no affine; give spacing"):
        inferer(torch.from_numpy(volume), network)


def _cohort(tmp_path, n=2):
    """A datalist of registered T1 volumes with masks and paired T2 truth, relative paths."""
    items = []
    for s in range(n):
        folder = tmp_path / "cohort" / f"sub-{s:02d}"
        folder.mkdir(parents=True)
        volume, head = _head(10 + s)
        _save(folder / "t1.nii.gz", volume, PERMUTED_ANISOTROPIC)
        _save(folder / "t1_mask.nii.gz", head.astype(np.uint8), PERMUTED_ANISOTROPIC)
        items.append({"subject": f"sub-{s:02d}", "t1": f"sub-{s:02d}/t1.nii.gz", "t1_mask": f"sub-{s:02d}/t1_mask.nii.gz"})
    datalist = tmp_path / "cohort" / "dataset.json"
    datalist.write_text(json.dumps({"training": [], "test": items}))
    return datalist


def test_translate_datalist_from_a_bundle_config(tmp_path):
    datalist = _cohort(tmp_path)
    network = {"_target_": "modality_translation.networks.ResNetGenerator", "base_channels": 4, "num_blocks": 1}
    torch.save(ConfigParser({"network": network}).get_parsed_content("network").state_dict(), tmp_path / "model.pt")
    config = {
        "network": network,
        "translator": {
            "_target_": "modality_translation.inference.VolumeTranslator",
            "network": "@network",
            "source_modality": "t1",
            "target_modality": "t2",
            "weights": str(tmp_path / "model.pt"),
            "slice_size": 32,
            "batch_size": 8,
            "device": "auto",
            "preprocessing": {"mr": {"normalization": {"method": "percentile", "lower": 1.0, "upper": 99.0}}},
        },
        "run": [{
            "_target_": "modality_translation.inference.translate_datalist",
            "translator": "@translator",
            "datalist": str(datalist),
            "output_dir": str(tmp_path / "predictions"),
            "source_key": "t1",
            "output_key": "pred_t2",
            "mask_key": "t1_mask",
            "write_dicom": True,
        }],
    }
    parser = ConfigParser(config)
    translator = parser.get_parsed_content("translator")
    assert translator.source.normalization == {"method": "percentile", "lower": 1.0, "upper": 99.0, "outside_value": -1.0}
    items = parser.get_parsed_content("run#0")
    assert [item["subject"] for item in items] == ["sub-00", "sub-01"]
    saved = json.loads((tmp_path / "predictions" / "predictions.json").read_text())
    assert saved == {"test": items}
    for item in items:
        output = tmp_path / "predictions" / item["subject"] / "pred_t2.nii.gz"
        assert item["pred_t2"] == str(output)
        assert nib.load(output).shape == nib.load(item["t1"]).shape
        np.testing.assert_array_equal(nib.load(output).affine, nib.load(item["t1"]).affine)
        dicom_files = sorted((tmp_path / "predictions" / item["subject"] / "pred_t2_dicom").glob("*.dcm"))
        assert item["pred_t2_dicom"] == str(dicom_files[0].parent) and len(dicom_files) == 32


def test_a_relative_output_folder_is_listed_by_absolute_path(tmp_path, monkeypatch):
    """The evaluation reads relative entries against the dataset's folder: the outputs must not be relative."""
    datalist = _cohort(tmp_path, n=1)
    translator = VolumeTranslator(ResNetGenerator(base_channels=4, num_blocks=1), "t1", "t2", slice_size=32, device="cpu")
    monkeypatch.chdir(tmp_path)
    items = translate_datalist(translator, datalist, "eval/t1_to_t2", "t1", mask_key="t1_mask")
    expected = tmp_path / "eval" / "t1_to_t2" / "sub-00" / "pred.nii.gz"
    assert items[0]["pred"] == str(expected) and expected.is_file()
    saved = json.loads((tmp_path / "eval" / "t1_to_t2" / "predictions.json").read_text())
    assert saved["test"][0]["pred"] == str(expected)


def test_datalist_errors_before_any_work(tmp_path):
    datalist = _cohort(tmp_path)
    translator = _identity_translator("t1", "t2")
    output_dir = tmp_path / "out"
    (tmp_path / "cohort" / "sub-01" / "t1.nii.gz").unlink()
    with pytest.raises(InputReadError, match=r"sub-01/t1.nii.gz: volume to translate \('t1' of subject 'sub-01'\) does not exist"):
        translate_datalist(translator, datalist, output_dir, "t1", mask_key="t1_mask")
    assert not output_dir.exists()  # sub-00 was not translated either
    with pytest.raises(PreprocessingError, match="datalist split 'training' is empty"):
        translate_datalist(translator, datalist, output_dir, "t1", split="training")
    with pytest.raises(PreprocessingError, match="datalist has no split 'validation'"):
        translate_datalist(translator, datalist, output_dir, "t1", split="validation")
    with pytest.raises(InputReadError, match="datalist file does not exist"):
        translate_datalist(translator, tmp_path / "nope.json", output_dir, "t1")

    datalist = _cohort(tmp_path / "second")
    mask = tmp_path / "second" / "cohort" / "sub-00" / "t1_mask.nii.gz"
    _save(mask, np.ones((32, 32, 30), np.uint8), PERMUTED_ANISOTROPIC)
    with pytest.raises(GeometryError, match=r"t1_mask.nii.gz: head mask shape \(32, 32, 30\) differs from \(32, 32, 32\) of .*sub-00/t1.nii.gz"):
        translate_datalist(translator, datalist, output_dir, "t1", mask_key="t1_mask")
    _save(mask, np.ones((32, 32, 32), np.uint8), PERMUTED_ISOTROPIC_IN_PLANE)
    with pytest.raises(GeometryError, match=r"head mask affine .* differs from .* of .*sub-00/t1.nii.gz"):
        translate_datalist(translator, datalist, output_dir, "t1", mask_key="t1_mask")
    assert not output_dir.exists()


def test_files_checked_on_the_reference_grid_from_their_headers(tmp_path):
    reference = _save(tmp_path / "pred.nii.gz", np.zeros((32, 32, 32), np.float32), PERMUTED_ANISOTROPIC)
    same_grid = _save(tmp_path / "target.nii.gz", np.ones((32, 32, 32), np.float32), PERMUTED_ANISOTROPIC)
    check_files_on_grid(reference, "prediction", [(same_grid, "target"), (same_grid, "head mask")])
    shifted = PERMUTED_ANISOTROPIC.copy()
    shifted[0, 3] += 1.0
    moved = _save(tmp_path / "moved.nii.gz", np.ones((32, 32, 32), np.float32), shifted)
    with pytest.raises(GeometryError, match=r"moved.nii.gz: head mask affine .* differs from .* of .*pred.nii.gz"):
        check_files_on_grid(reference, "prediction", [(same_grid, "target"), (moved, "head mask")])
    with pytest.raises(InputReadError, match=r"absent.nii.gz: target file does not exist"):
        check_files_on_grid(reference, "prediction", [(tmp_path / "absent.nii.gz", "target")])
    flat = _save(tmp_path / "flat.nii.gz", np.zeros((32, 32), np.float32), np.eye(4))
    with pytest.raises(InputReadError, match=r"flat.nii.gz: prediction must be a 3D volume, got shape \(32, 32\)"):
        check_files_on_grid(flat, "prediction")


def test_supervised_evaluator_path_matches_the_file_path(tmp_path):
    """LoadImaged + Orientationd(LPS) + CTWindowd, VolumeSliceInferer, Invertd back to HU and the file grid."""
    hu = np.random.default_rng(7).uniform(-1000, 2000, (24, 32, 32)).astype(np.float32)
    source = _save(tmp_path / "ct.nii.gz", hu, PERMUTED_ISOTROPIC_IN_PLANE)
    window = [400, 1800]
    preprocessing = Compose([
        LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
        Orientationd("image", axcodes="LPS", labels=None), CTWindowd("image", window, out_range=(-1, 1)),
    ])
    postprocessing = Compose([
        Invertd("pred", preprocessing, orig_keys="image"),
        SaveImaged("pred", output_dir=tmp_path / "evaluator", output_postfix="sct", separate_folder=False, resample=False),
    ])
    network = _tiny_generator()
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(Dataset([{"image": str(source)}], preprocessing)),
        network=network, inferer=VolumeSliceInferer(slice_size=32), postprocessing=postprocessing,
    )
    evaluator.run()
    translator = VolumeTranslator(network, "ct", "ct", slice_size=32, device="cpu",
                                  source_intensity={"window": window}, target_intensity={"window": window})
    expected = nib.load(translator.translate_file(source, tmp_path / "sct.nii.gz"))
    written = nib.load(tmp_path / "evaluator" / "ct_sct.nii.gz")
    np.testing.assert_allclose(written.affine, expected.affine, atol=1e-6)
    np.testing.assert_allclose(written.get_fdata(), expected.get_fdata(), atol=1e-3)
    assert -500.0 <= expected.get_fdata().min() < expected.get_fdata().max() <= 1300.0


def test_keep_dropout_keeps_only_the_dropout_layers_active():
    volume = np.random.default_rng(8).uniform(-1, 1, (4, 32, 32)).astype(np.float32)

    def network():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Conv2d(4, 1, 1))

    deterministic = VolumeTranslator(network(), "t1", "t2", slice_size=32, device="cpu")
    assert not deterministic.network.training
    runs = [translate_slices(deterministic.network, volume, (1, 1, 1), slice_size=32) for _ in range(2)]
    np.testing.assert_array_equal(*runs)
    noisy = VolumeTranslator(network(), "t1", "t2", slice_size=32, device="cpu", keep_dropout=True)
    assert noisy.network[2].training and not noisy.network[1].training
    runs = [translate_slices(noisy.network, volume, (1, 1, 1), slice_size=32) for _ in range(2)]
    assert not np.array_equal(*runs)


def test_a_ct_in_hounsfield_units_given_to_an_mr_model_is_refused_before_any_work(tmp_path):
    datalist = _cohort(tmp_path)
    volume, head = _head(11)
    ct_hu = np.where(head, 40.0 + volume / 50.0, -1000.0).astype(np.float32)
    ct_path = _save(tmp_path / "cohort" / "sub-01" / "t1.nii.gz", ct_hu, PERMUTED_ANISOTROPIC)
    output_dir = tmp_path / "out"
    for translator in (_identity_translator("t1", "t2"), _identity_translator("t1", "ct")):
        with pytest.raises(IntensityMismatchError, match=rf"^{ct_path}: the volume to translate should be T1 \(MR\) .*"
                           r"a CT in Hounsfield units"):
            translate_datalist(translator, datalist, output_dir, "t1", mask_key="t1_mask")
        assert not output_dir.exists()  # sub-00, a real T1, was not translated either
        with pytest.raises(IntensityMismatchError, match="a CT in Hounsfield units"):
            translator.translate_file(ct_path, output_dir / "ct.nii.gz")
