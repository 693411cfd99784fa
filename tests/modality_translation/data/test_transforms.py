import numpy as np
import pytest
import torch
from monai.transforms import Resize

from modality_translation.data import (
    CheckModalityd,
    ModalityMismatchError,
    jitter_size,
    translation_eval_transforms,
    translation_train_transforms,
)
from tests.modality_translation.data.cohort import save_nifti, slice_array


@pytest.fixture
def slice_file(tmp_path):
    path = tmp_path / "sub-001/slices/t1/sub-001_axial_0000.nii.gz"
    save_nifti(path, slice_array(0, 0, 0))
    return path


def matched_windows(transform, slice_file, windows, seeds):
    """For each seed, the key of the window of ``windows`` the transform's output equals (asserted to exist)."""
    keys = []
    for seed in range(seeds):
        transform.set_random_state(seed=seed)
        out = transform({"image": str(slice_file)})["image"][0].numpy()
        matches = [key for key, window in windows.items() if out.shape == window.shape and np.allclose(out, window, atol=1e-5)]
        assert matches, f"seed {seed}: the sample is none of the expected windows"
        keys.append(matches[0])
    return keys


def test_jitter_size_of_cyclegan():
    assert jitter_size((256, 256), 286 / 256) == (286, 286)
    with pytest.raises(ValueError, match="jitter_scale"):
        jitter_size((256, 256), 0.9)


def test_eval_twin_loads_channel_first_float_and_keeps_slices_of_the_training_size(slice_file):
    out = translation_eval_transforms("image", crop_size=(32, 32))({"image": str(slice_file)})["image"]
    assert out.shape == (1, 32, 32) and out.dtype == torch.float32
    np.testing.assert_allclose(out[0].numpy(), slice_array(0, 0, 0), atol=1e-6)
    smaller = translation_eval_transforms("image", crop_size=(16, 16))({"image": str(slice_file)})["image"]
    assert smaller.shape == (1, 16, 16)


def test_train_jitter_crops_the_upsized_slice_and_flips(slice_file):
    transform = translation_train_transforms("image", crop_size=(24, 24), jitter_scale=1.25, flip_prob=0.5)
    upsized = Resize((30, 30), mode="bilinear")(torch.from_numpy(slice_array(0, 0, 0))[None])[0].numpy()
    windows = {
        (r, c, flipped): (upsized[r : r + 24, c : c + 24][:, ::-1] if flipped else upsized[r : r + 24, c : c + 24])
        for r in range(7) for c in range(7) for flipped in (False, True)
    }
    # The ramp runs along columns, so the column offset and the flip are identifiable.
    matches = matched_windows(transform, slice_file, windows, seeds=30)
    assert len({key[1] for key in matches}) > 3 and {key[2] for key in matches} == {False, True}


def test_patch_training_crops_patches_of_the_whole_slice_at_its_own_resolution(slice_file):
    transform = translation_train_transforms("image", crop_size=(16, 16), jitter_scale=1.0, flip_prob=0.0,
                                             slice_size=(32, 32))
    whole = slice_array(0, 0, 0)
    assert whole.shape == (32, 32)
    windows = {(r, c): whole[r : r + 16, c : c + 16] for r in range(17) for c in range(17)}
    # Each patch is a window of the slice at its own resolution, not of a resized copy.
    assert len({key[1] for key in matched_windows(transform, slice_file, windows, seeds=20)}) > 3
    # The deterministic twin of a patch training gives whole slices of slice_size.
    out = translation_eval_transforms("image", crop_size=(32, 32))({"image": str(slice_file)})["image"]
    assert out.shape == (1, 32, 32)


def test_patch_training_refuses_a_slice_smaller_than_the_patch(slice_file):
    with pytest.raises(ValueError, match=r"slice_size \[8, 8\].*crop_size \[16, 16\]"):
        translation_train_transforms("image", crop_size=(16, 16), slice_size=(8, 8))


def test_train_transform_is_reproducible_for_a_seed(slice_file):
    transform = translation_train_transforms("image", crop_size=(24, 24), jitter_scale=1.25)
    outputs = []
    for _ in range(2):
        transform.set_random_state(seed=11)
        outputs.append(transform({"image": str(slice_file)})["image"])
    assert torch.equal(outputs[0], outputs[1])


def test_2_5d_slices_load_channel_first(tmp_path):
    path = tmp_path / "slab.nii.gz"
    save_nifti(path, slice_array(0, 0, 0, channels=3))
    out = translation_eval_transforms("image", crop_size=(32, 32), slice_channels=3)({"image": str(path)})["image"]
    assert out.shape == (3, 32, 32)
    np.testing.assert_allclose((out[2] - out[0]).numpy(), 0.02, atol=1e-5)


def test_check_modality_by_file_name_and_header(tmp_path, slice_file):
    load = translation_eval_transforms("image", crop_size=(32, 32))
    data = load({"image": str(slice_file)})
    assert CheckModalityd("image", "t1")(data)["image"] is data["image"]
    with pytest.raises(ModalityMismatchError, match="named as a T1 image but is used as T2") as error:
        CheckModalityd("image", "t2")(data)
    assert error.value.path == str(slice_file)

    neutral = tmp_path / "scan.nii.gz"
    save_nifti(neutral, slice_array(0, 0, 0), description="CT head")
    with pytest.raises(ModalityMismatchError, match="named as a CT image but is used as T2"):
        CheckModalityd("image", "t2")(load({"image": str(neutral)}))
    save_nifti(neutral, slice_array(0, 0, 0))
    CheckModalityd("image", "t2")(load({"image": str(neutral)}))
