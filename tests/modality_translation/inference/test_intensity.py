"""Intensity mapping between modalities and the network scale (modality_translation/inference/intensity.py)."""

import json

import numpy as np
import pytest

from medgan_common.errors import InputReadError, PreprocessingError
from modality_translation.inference import IntensityMapping, IntensityMismatchError
from preprocessing.normalization import head_mask_mr, percentile_normalize, zscore_normalize


def _mr_head(seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:32, :32, :32]
    head = ((z - 16) / 12.0) ** 2 + ((y - 16) / 11.0) ** 2 + ((x - 16) / 10.0) ** 2 < 1
    volume = np.abs(rng.normal(0, 5, head.shape))
    volume[head] += 300 + 200 * np.sin(x[head] / 3.0)
    return volume.astype(np.float32), head


def test_ct_window_inverts_back_to_hu_exactly_inside_the_window_and_clips_outside():
    mapping = IntensityMapping("CT", window={"center": 40, "width": 400})
    assert mapping.is_ct and mapping.modality == "ct"
    hu = np.array([-1000.0, -160.0, -159.5, 0.0, 37.25, 239.0, 240.0, 1500.0], dtype=np.float32)
    network = mapping.to_network(hu)
    assert network.min() == -1.0 and network.max() == 1.0
    assert network[3] == pytest.approx((0.0 - (-160.0)) / 400.0 * 2 - 1)
    back = mapping.from_network(network)
    inside = (hu >= -160) & (hu <= 240)
    np.testing.assert_allclose(back[inside], hu[inside], atol=1e-4)
    np.testing.assert_array_equal(back[~inside], np.clip(hu[~inside], -160, 240))
    # A network overshooting its range maps to the window's edges.
    np.testing.assert_array_equal(mapping.from_network(np.array([-1.3, 1.2])), [-160.0, 240.0])
    assert mapping.background_value == -1.0 and mapping.data_range == 2.0


def test_mr_percentile_mapping_is_the_preprocessing_normalisation_and_mr_outputs_stay_on_the_scale():
    volume, head = _mr_head()
    mapping = IntensityMapping("t1")
    mask = head_mask_mr(volume)
    # As the cohort runner writes its volumes: -1 outside the head mask.
    np.testing.assert_array_equal(mapping.to_network(volume), percentile_normalize(volume, mask, outside_value=-1.0))
    np.testing.assert_array_equal(mapping.to_network(volume, head), percentile_normalize(volume, head, outside_value=-1.0))
    custom = IntensityMapping("T2", normalization={"method": "percentile", "lower": 2, "upper": 98, "outside_value": None})
    np.testing.assert_array_equal(custom.to_network(volume, head), percentile_normalize(volume, head, 2, 98))
    assert mapping.background_value == -1.0 and mapping.data_range == 2.0
    outputs = np.linspace(-1, 1, 7, dtype=np.float32)
    np.testing.assert_array_equal(mapping.from_network(outputs), outputs)


def test_mr_zscore_and_volumes_already_on_the_network_scale():
    volume, head = _mr_head(1)
    zscore = IntensityMapping("t2", normalization={"method": "zscore"})
    np.testing.assert_array_equal(zscore.to_network(volume, head), zscore_normalize(volume, head))
    assert zscore.background_value == 0.0 and zscore.data_range is None
    normalised = percentile_normalize(volume, head, outside_value=-1.0)
    np.testing.assert_array_equal(IntensityMapping("t2", on_network_scale=True).to_network(normalised), normalised)
    windowed = np.linspace(-1, 1, 9, dtype=np.float32)
    ct = IntensityMapping("ct", on_network_scale=True)
    np.testing.assert_array_equal(ct.to_network(windowed), windowed)
    np.testing.assert_allclose(ct.from_network(windowed), np.linspace(0, 80, 9), atol=1e-5)  # brain window


def test_from_preprocessing_config_takes_the_recorded_window_and_normalisation(tmp_path):
    config = {
        "ct": {"window": [50, 350], "out_range": [-1.0, 1.0]},
        "mr": {"head_mask": {"method": "noise", "closing_radius": 1},
               "normalization": {"method": "percentile", "lower": 1.0, "upper": 99.0, "out_range": [-1.0, 1.0]}},
    }
    ct = IntensityMapping.from_preprocessing_config("ct", config)
    assert (ct.window.center, ct.window.width) == (50.0, 350.0)
    t1 = IntensityMapping.from_preprocessing_config("t1", config)
    assert t1.normalization == {"method": "percentile", "lower": 1.0, "upper": 99.0, "outside_value": -1.0}
    assert t1.head_mask == {"method": "noise", "closing_radius": 1}
    assert IntensityMapping.from_preprocessing_config("t2", {}).normalization["method"] == "percentile"
    # The header of the cohort's dataset.json records the same, as a file.
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({
        "ct_window": {"name": "ct_mr", "center": 500.0, "width": 3000.0, "out_range": [-1.0, 1.0], "volumes": "..."},
        "normalisation": {"method": "zscore", "out_range": [-1.0, 1.0]}, "test": [],
    }))
    ct = IntensityMapping.from_preprocessing_config("ct", dataset, on_network_scale=True)
    assert (ct.window.center, ct.window.width, ct.on_network_scale) == (500.0, 3000.0, True)
    assert IntensityMapping.from_preprocessing_config("t1", str(dataset)).normalization["method"] == "zscore"
    with pytest.raises(InputReadError, match="nothing.yaml: cannot read the preprocessing record"):
        IntensityMapping.from_preprocessing_config("t1", tmp_path / "nothing.yaml")
    # Explicit keys override the configuration's; an IntensityMapping is used as it is.
    resolved = IntensityMapping.resolve("t1", {"on_network_scale": True}, config)
    assert resolved.on_network_scale and resolved.normalization["lower"] == 1.0
    assert IntensityMapping.resolve("ct", {"window": "bone"}, config).window.name == "bone"
    assert IntensityMapping.resolve("t1", t1) is t1
    with pytest.raises(ValueError, match="intensity mapping of 't1' given for modality 't2'"):
        IntensityMapping.resolve("t2", t1)


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="unknown MR normalisation method 'minmax'"):
        IntensityMapping("t1", normalization={"method": "minmax"})
    with pytest.raises(ValueError, match=r"unknown 'zscore' normalisation option\(s\) \['lower'\]"):
        IntensityMapping("t1", normalization={"method": "zscore", "lower": 1})
    with pytest.raises(ValueError, match="differs from the network range"):
        IntensityMapping("t1", normalization={"method": "percentile", "out_range": [0, 1]})
    with pytest.raises(ValueError, match="unknown CT window preset"):
        IntensityMapping("ct", window="lungs")
    with pytest.raises(PreprocessingError, match="percentiles 0.5 and 99.5 are equal"):
        IntensityMapping("t1").to_network(np.ones((8, 8, 8), dtype=np.float32), np.ones((8, 8, 8), bool))


def _ct_head_hu(seed=0):
    volume, head = _mr_head(seed)
    return np.where(head, 40.0 + volume / 100.0, -1000.0).astype(np.float32), head


def test_intensity_checks_refuse_what_cannot_be_the_modality_on_its_scale():
    mr, head = _mr_head()
    ct_hu, _ = _ct_head_hu()
    normalised = IntensityMapping("t2").to_network(mr, head)
    windowed = IntensityMapping("ct", window={"center": 500, "width": 3000}, out_range=(-1, 1)).to_network(ct_hu)
    # What each mapping accepts.
    IntensityMapping("t2", on_network_scale=True).check_intensities(normalised, "t2.nii.gz")
    IntensityMapping("t2").check_intensities(mr, "t2.nii.gz")
    IntensityMapping("t2", normalization={"method": "zscore"}).check_intensities(
        IntensityMapping("t2", normalization={"method": "zscore"}).to_network(mr, head))
    IntensityMapping("ct", on_network_scale=True).check_intensities(windowed, "ct.nii.gz")
    IntensityMapping("ct").check_intensities(ct_hu, "ct_hu.nii.gz")
    # A CT in HU where a normalised MR is expected, and where a raw MR is expected.
    with pytest.raises(IntensityMismatchError, match=r"^ct_hu.nii.gz: the volume to translate should be T2 \(MR\) on the "
                       r"network scale \[-1, 1\], but its values span \[-1000, .*\]; \d+% of its voxels are at or below "
                       r"-500: a CT in Hounsfield units, not an MR"):
        IntensityMapping("t2", on_network_scale=True).check_intensities(ct_hu, "ct_hu.nii.gz", "volume to translate")
    with pytest.raises(IntensityMismatchError, match=r"^ct_hu.nii.gz: the volume should be T1 \(MR\) intensities, but "
                       r"\d+% of its voxels are at or below -500 .*: the air of a CT in Hounsfield units"):
        IntensityMapping("t1").check_intensities(ct_hu, "ct_hu.nii.gz")
    # Raw MR intensities declared as already normalised: beyond the range, no CT hint.
    with pytest.raises(IntensityMismatchError, match=r"should be T2 \(MR\) on the network scale \[-1, 1\], but its "
                       r"values span \[\d.*\]$"):
        IntensityMapping("t2", on_network_scale=True).check_intensities(mr, "t2_raw.nii.gz")
    # Windowed values where HU are expected (a synthetic CT left on the network scale).
    with pytest.raises(IntensityMismatchError, match=r"pred.nii.gz: the prediction should be CT in Hounsfield units, "
                       r"but its values span \[-1, .*\], within the network range \[-1, 1\]"):
        IntensityMapping("ct").check_intensities(windowed, "pred.nii.gz", "prediction")
    assert issubclass(IntensityMismatchError, PreprocessingError)
