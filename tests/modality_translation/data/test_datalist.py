import os

import pytest

from medgan_common.errors import InputReadError, PreprocessingError
from modality_translation.data import (
    DatalistError,
    ModalityMismatchError,
    check_modality_name,
    flatten_slices,
    load_translation_datalist,
    modality_named_in,
    pair_slices,
)
from modality_translation.data.datalist import (
    DatalistFileError,
    load_datalist_items,
    modality_of_key,
    registered_image_modalities,
)
from tests.modality_translation.data.cohort import edit_datalist, save_nifti, slice_array, write_cohort


def test_items_have_absolute_paths_and_untouched_subjects(tmp_path):
    path = write_cohort(tmp_path)
    items = load_translation_datalist(path, "training", modalities=("t1", "t2"))
    assert [item["subject"] for item in items] == ["sub-001", "sub-002"]  # a folder of that name exists
    first = items[0]["t1_slices"][0]
    assert os.path.isabs(first) and os.path.isfile(first)
    assert first == str(tmp_path / "sub-001/slices/t1/sub-001_axial_0000.nii.gz")
    assert items[0]["t2"] == str(tmp_path / "sub-001/t2.nii.gz")  # resolved even though the volume is absent here


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(DatalistError, match="datalist file does not exist") as error:
        load_translation_datalist(tmp_path / "dataset.json")
    assert error.value.path == str(tmp_path / "dataset.json")
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatalistError, match="cannot read the datalist as JSON"):
        load_translation_datalist(tmp_path / "dataset.json")


def test_missing_and_empty_split(tmp_path):
    path = write_cohort(tmp_path, splits={"training": ["sub-001"], "test": []})
    with pytest.raises(DatalistError, match=r"datalist has no split 'validation' \(it has: training, test\)"):
        load_translation_datalist(path, "validation")
    with pytest.raises(DatalistError, match="split 'test' is empty"):
        load_translation_datalist(path, "test")


def test_item_without_requested_modality(tmp_path):
    path = write_cohort(tmp_path)
    edit_datalist(path, lambda c: c["training"][1].pop("t2_slices"))
    with pytest.raises(DatalistError, match="subject 'sub-002' in split 'training' has no 't2_slices'"):
        load_translation_datalist(path, "training", modalities=("t1", "t2"))
    # Requesting only t1 is fine.
    assert len(load_translation_datalist(path, "training", modalities=("t1",))) == 2


def test_item_without_subject(tmp_path):
    path = write_cohort(tmp_path)
    edit_datalist(path, lambda c: c["training"][0].pop("subject"))
    with pytest.raises(DatalistError, match="item 0 of split 'training' has no 'subject'"):
        load_translation_datalist(path, "training", modalities=("t1",))


def test_missing_slice_file_named(tmp_path):
    path = write_cohort(tmp_path)
    missing = tmp_path / "sub-002/slices/t2/sub-002_axial_0001.nii.gz"
    missing.unlink()
    with pytest.raises(DatalistError) as error:
        load_translation_datalist(path, "training", modalities=("t1", "t2"))
    assert error.value.path == str(missing)
    assert f"t2 slice file ('t2_slices' of subject 'sub-002') does not exist (listed in {path.resolve()})" in str(error.value)
    assert isinstance(error.value, PreprocessingError)


def test_file_of_another_modality_refused(tmp_path):
    path = write_cohort(tmp_path)

    def swap(content):
        content["training"][0]["t1_slices"][1] = content["training"][0]["t2_slices"][1]

    edit_datalist(path, swap)
    with pytest.raises(ModalityMismatchError, match="named as a T2 image but is used as T1") as error:
        load_translation_datalist(path, "training", modalities=("t1", "t2"))
    assert error.value.path.endswith("sub-001/slices/t2/sub-001_axial_0001.nii.gz")


def test_undeclared_modality(tmp_path):
    path = write_cohort(tmp_path, declared=["t1", "t2"])
    with pytest.raises(DatalistError, match=r"modalities \['ct'\] are not among the datalist's modalities"):
        load_translation_datalist(path, "training", modalities=("t1", "ct"))


def test_keys_of_registered_volumes_and_truths_name_their_image_modality():
    assert modality_of_key("t2_in_t1") == "t2"
    assert modality_of_key("truth_ct_in_t2") == "ct"
    assert modality_of_key("truth_T1") == "t1"
    assert modality_of_key("ct") == "ct"
    check_modality_name("sub-001_t2_in_t1.nii.gz", "t2_in_t1")
    with pytest.raises(ModalityMismatchError, match="sub-001_t1.nii.gz: is named as a T1 image but is used as T2$"):
        check_modality_name("sub-001_t1.nii.gz", "truth_t2_in_t1")
    # A volume resampled into another modality's space is an image of its own modality, not of the space's.
    assert registered_image_modalities("sub-001_ct_in_t2_hu.nii.gz") == {"ct"}
    assert registered_image_modalities("slices/t2_in_t1/sub-001_axial_0001.nii.gz") == {"t2"}
    assert registered_image_modalities("sub-001_t2.nii.gz") == registered_image_modalities("sub_min_t2") == set()
    check_modality_name("sub-001_ct_in_t2_hu.nii.gz", "truth_ct_in_t2")
    with pytest.raises(ModalityMismatchError, match="sub-001_ct_in_t2_hu.nii.gz: is named as a CT image but is used as T2$"):
        check_modality_name("sub-001_ct_in_t2_hu.nii.gz", "t2")
    with pytest.raises(ModalityMismatchError, match="is named as a T2 image but is used as T1$"):
        check_modality_name("sub-001_truth_t2_in_t1.nii.gz", "t1")


def test_registered_volume_key_is_checked_as_its_image_modality(tmp_path):
    # The preprocessing's layout: the T2 registered onto the T1 under "t2_in_t1", declared modalities ct, t1, t2.
    path = write_cohort(tmp_path, modalities=("t1", "t2_in_t1", "ct"), declared=["ct", "t1", "t2"])
    items = load_translation_datalist(path, "training", modalities=("t1", "t2_in_t1"))
    assert items[1]["t2_in_t1_slices"][2] == str(tmp_path / "sub-002/slices/t2_in_t1/sub-002_axial_0002.nii.gz")
    assert items[1]["t2_in_t1"] == str(tmp_path / "sub-002/t2_in_t1.nii.gz")
    volumes = load_translation_datalist(path, "test", modalities=("t2_in_t1",), require_slices=False, check_files=False)
    assert volumes[0]["t2_in_t1"] == str(tmp_path / "sub-004/t2_in_t1.nii.gz")

    def ct_as_t2_in_t1(content):
        content["training"][1]["t2_in_t1_slices"][0] = content["training"][1]["ct_slices"][0]

    edit_datalist(path, ct_as_t2_in_t1)
    with pytest.raises(ModalityMismatchError, match="is named as a CT image but is used as T2") as error:
        load_translation_datalist(path, "training", modalities=("t1", "t2_in_t1"))
    assert error.value.path == str(tmp_path / "sub-002/slices/ct/sub-002_axial_0000.nii.gz")


def test_truth_key_is_checked_as_its_image_modality(tmp_path):
    path = write_cohort(tmp_path, modalities=("t2", "truth_ct_in_t2"), declared=["ct", "t2"])
    items = load_translation_datalist(path, "validation", modalities=("t2", "truth_ct_in_t2"))
    assert items[0]["truth_ct_in_t2_slices"][0] == str(tmp_path / "sub-003/slices/truth_ct_in_t2/sub-003_axial_0000.nii.gz")

    def t2_as_truth_ct(content):
        content["validation"][0]["truth_ct_in_t2"] = content["validation"][0]["t2"]

    edit_datalist(path, t2_as_truth_ct)
    with pytest.raises(ModalityMismatchError, match="is named as a T2 image but is used as CT") as error:
        load_translation_datalist(path, "validation", modalities=("truth_ct_in_t2",), require_slices=False,
                                  check_files=False)
    assert error.value.path == str(tmp_path / "sub-003/t2.nii.gz")


def test_ct_paired_onto_its_own_mr_is_checked_as_ct(tmp_path):
    # The preprocessing's ct_pairing layout: the CT on its subject's T2 grid under "ct_in_t2", in HU
    # under "ct_in_t2_hu", paired slice by slice with "t2_slices".
    assert [modality_of_key(k) for k in ("ct_in_t2", "ct_in_t1_hu", "ct_hu", "truth_ct_in_t2")] == ["ct"] * 4
    path = write_cohort(tmp_path, modalities=("t2", "ct_in_t2"), declared=["ct", "t1", "t2"])
    edit_datalist(path, lambda c: [item.update(ct_in_t2_hu=f"{item['subject']}/ct_in_t2_hu.nii.gz")
                                   for split in ("training", "validation", "test") for item in c[split]])
    items = load_translation_datalist(path, "training", modalities=("t2", "ct_in_t2"))
    assert items[0]["ct_in_t2_slices"][1] == str(tmp_path / "sub-001/slices/ct_in_t2/sub-001_axial_0001.nii.gz")
    assert items[0]["ct_in_t2_hu"] == str(tmp_path / "sub-001/ct_in_t2_hu.nii.gz")  # a path, resolved
    assert len(pair_slices(items, "t2_slices", "ct_in_t2_slices")) == 6

    def t2_as_ct_in_t2(content):
        content["training"][0]["ct_in_t2_slices"][1] = content["training"][0]["t2_slices"][1]

    edit_datalist(path, t2_as_ct_in_t2)
    with pytest.raises(ModalityMismatchError, match="is named as a T2 image but is used as CT") as error:
        load_translation_datalist(path, "training", modalities=("t2", "ct_in_t2"))
    assert error.value.path == str(tmp_path / "sub-001/slices/t2/sub-001_axial_0001.nii.gz")
    no_ct = write_cohort(tmp_path / "mr_only", modalities=("t2", "ct_in_t2"), declared=["t1", "t2"])
    with pytest.raises(DatalistError, match=r"modalities \['ct \(ct_in_t2\)'\] are not among"):
        load_translation_datalist(no_ct, "training", modalities=("t2", "ct_in_t2"))


def test_registered_volume_of_an_undeclared_modality(tmp_path):
    path = write_cohort(tmp_path, modalities=("t1", "flair_in_t1"), declared=["t1", "t2"])
    with pytest.raises(DatalistError, match=r"modalities \['flair \(flair_in_t1\)'\] are not among"):
        load_translation_datalist(path, "training", modalities=("t1", "flair_in_t1"))


def test_slice_shape_and_channels_checked(tmp_path):
    path = write_cohort(tmp_path, channels=3)
    assert load_translation_datalist(path, "training", modalities=("t1",), slice_channels=3)
    with pytest.raises(DatalistError, match="has 3 channel\\(s\\), expected 1"):
        load_translation_datalist(path, "training", modalities=("t1",), slice_channels=1)
    volume = tmp_path / "sub-001/slices/t1/sub-001_axial_0000.nii.gz"
    save_nifti(volume, slice_array(0, 0, 0)[..., None, None].repeat(2, axis=2).repeat(2, axis=3))
    with pytest.raises(DatalistError, match=r"expected \(H, W\) or \(H, W, channels\)"):
        load_translation_datalist(path, "training", modalities=("t1",))


def test_unreadable_slice(tmp_path):
    path = write_cohort(tmp_path)
    (tmp_path / "sub-001/slices/t1/sub-001_axial_0000.nii.gz").write_bytes(b"truncated")
    with pytest.raises(PreprocessingError, match="cannot read the t1 slice of subject 'sub-001'"):
        load_translation_datalist(path, "training", modalities=("t1",))


def test_modality_names_in_file_names():
    assert modality_named_in("IXI002-Guys-0828-T1.nii.gz") == {"t1"}
    assert modality_named_in("sub-01_T2w.nii.gz") == {"t2"}
    assert modality_named_in("truth_t2_in_t1.nii.gz") == {"t1", "t2"}
    assert modality_named_in("ct/slice_0001.nii.gz") == {"ct"}
    assert modality_named_in("octopus_t12.nii.gz") == set()


def test_flatten_and_pair(tmp_path):
    path = write_cohort(tmp_path, slices={"t1": 3, "t2": 2})
    items = load_translation_datalist(path, "training", modalities=("t1", "t2"))
    records = flatten_slices(items, "t2")
    assert len(records) == 4
    assert records[1] == {"image": items[0]["t2_slices"][1], "subject": "sub-001", "modality": "t2", "slice": 1}
    with pytest.raises(DatalistError, match="'t1_slices' has 3 slices but 't2_slices' has 2"):
        pair_slices(items, "t1_slices", "t2_slices")
    paired = pair_slices(items, "t1_slices", "t1_slices")
    assert len(paired) == 6 and paired[0]["A"] == paired[0]["B"]


def test_one_reader_for_inference_and_evaluation_resolves_against_the_datalist_folder(tmp_path, monkeypatch):
    path = write_cohort(tmp_path / "cohort")
    volume = tmp_path / "cohort" / "sub-004" / "t1.nii.gz"
    save_nifti(volume, slice_array(0, 0, 0)[..., None])

    def add_pair(content):
        content["test"][0].update({"t2_in_t1": "sub-004/t2_in_t1.nii.gz", "age": "54"})

    edit_datalist(path, add_pair)
    monkeypatch.chdir(tmp_path)  # not the datalist's folder: relative paths must not depend on it
    [item] = load_datalist_items(path, "test", path_keys={"t1": "volume to translate"})
    assert item["t1"] == str(volume)
    # Every key holding files is resolved, existing or not (a registered volume too); others are kept.
    assert item["t2_in_t1"] == str(tmp_path / "cohort" / "sub-004" / "t2_in_t1.nii.gz")
    assert item["t1_slices"][0] == str(tmp_path / "cohort" / "sub-004" / "slices" / "t1" / "sub-004_axial_0000.nii.gz")
    assert item["subject"] == "sub-004" and item["age"] == "54"
    # The training reader gives the same items.
    assert load_translation_datalist(path, "test", modalities=("t1",)) == [item]
    # Items in memory: paths against base_dir when given, else as they are.
    listed = [{"subject": "sub-004", "t1": "sub-004/t1.nii.gz"}]
    assert load_datalist_items(listed, base_dir=tmp_path / "cohort", path_keys={"t1": "volume"})[0]["t1"] == str(volume)
    with pytest.raises(DatalistFileError, match=r"sub-004/t1.nii.gz: volume \('t1' of subject 'sub-004'\) does not exist$"):
        load_datalist_items(listed, path_keys={"t1": "volume"})


def test_one_reader_errors_name_the_datalist_and_the_subject(tmp_path):
    path = write_cohort(tmp_path)
    with pytest.raises(DatalistFileError, match="datalist file does not exist") as error:
        load_datalist_items(tmp_path / "absent.json")
    assert isinstance(error.value, InputReadError) and isinstance(error.value, DatalistError)
    with pytest.raises(DatalistError, match=rf"^{path}: datalist has no split 'validatio' \(it has: training, "):
        load_datalist_items(path, "validatio")
    with pytest.raises(DatalistError, match=rf"^{path}: subject 'sub-004' has no 'pred' \(prediction\)$"):
        load_datalist_items(path, "test", path_keys={"pred": "prediction"})
    (tmp_path / "sub-004" / "t1.nii.gz").parent.mkdir(exist_ok=True)
    with pytest.raises(DatalistFileError, match=rf"t1.nii.gz: volume \('t1' of subject 'sub-004'\) does not exist "
                                                rf"\(listed in {path}\)$"):
        load_datalist_items(path, "test", path_keys={"t1": "volume"})
    edit_datalist(path, lambda content: content["training"][1].update(subject="sub-001"))
    with pytest.raises(DatalistError, match="subjects listed more than once in split 'training': sub-001"):
        load_datalist_items(path, "training")
    with pytest.raises(DatalistError, match="subjects listed more than once"):
        load_translation_datalist(path, "training")
    edit_datalist(path, lambda content: content["test"][0].pop("subject"))
    with pytest.raises(DatalistError, match=rf"^{path}: item 0 of split 'test' has no 'subject'$"):
        load_datalist_items(path, "test")
    with pytest.raises(DatalistError, match="datalist split 'test' is empty: no subject to use"):
        load_datalist_items([], "test")
