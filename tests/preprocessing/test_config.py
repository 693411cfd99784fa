"""Configuration loading, merging and checking (preprocessing/config.py)."""

from __future__ import annotations

import json

import pytest
import yaml

from preprocessing.config import (
    DEFAULT_CONFIG,
    SHIPPED_CONFIGS,
    ConfigError,
    config_sha256,
    ct_pairing_config,
    load_config,
    merge_config,
    pairing_config,
    output_min_spacing,
    registration_config,
    shipped_config_path,
    slice_size,
    validate_config,
)


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_load_and_are_named_after_their_file(name):
    config = load_config(name)
    assert config["name"] == name
    assert shipped_config_path(name).is_file()
    # Every key of the defaults is present after merging.
    assert set(config) == set(DEFAULT_CONFIG)


def test_demo_paired_is_the_demo_with_every_head_slice_and_one_neighbour():
    demo, paired = load_config("demo"), load_config("demo_paired")
    assert paired["slices"]["selection"] == {"mode": "head_fraction", "fraction": 1.0}
    assert paired["slices"]["neighbours"] == 1
    # Registration, pairing, windows and split are the demo's: the two cohorts hold the same pairs.
    for section in set(DEFAULT_CONFIG) - {"name", "description", "slices"}:
        assert paired[section] == demo[section], section
    assert {k: v for k, v in paired["slices"].items() if k not in ("selection", "neighbours")} == {
        k: v for k, v in demo["slices"].items() if k not in ("selection", "neighbours")}


def test_shipped_configs_differ_where_the_data_differ():
    demo, ixi, cq500 = (load_config(n) for n in ("demo", "ixi", "cq500"))
    assert demo["input"]["modalities"] == ["ct", "t1", "t2"]
    assert ixi["input"]["modalities"] == ["t1", "t2"] and not ixi["artefact"]["enabled"]
    assert cq500["input"]["modalities"] == ["ct"] and cq500["artefact"]["enabled"]
    assert demo["slices"]["size"] == "auto" and ixi["slices"]["size"] == 256


def test_synthrad2023_config_pairs_without_registering_and_uses_the_delivered_mask():
    config = load_config("synthrad2023")
    assert config["input"]["layout"] == "synthrad2023" and config["input"]["modalities"] == ["ct", "t1"]
    assert not config["registration"]["enabled"] and not config["pairing"]["enabled"]
    assert config["ct_pairing"] == {**config["ct_pairing"], "enabled": True, "fixed": ["t1"], "register": False}
    assert config["artefact"]["mode"] == "given" and config["mr"]["head_mask"]["method"] == "given"
    assert config["artefact"]["outside_hu"] == -1024.0
    assert (config["ct"]["window"]["center"], config["ct"]["window"]["width"]) == (988, 4024)  # [-1024, 3000] HU


def test_yaml_and_json_files_merge_over_the_defaults(tmp_path):
    values = {"name": "mine", "ct": {"window": "bone"}, "slices": {"size": [128, 96]}}
    for path, text in ((tmp_path / "c.yaml", yaml.safe_dump(values)), (tmp_path / "c.json", json.dumps(values))):
        path.write_text(text)
        config = load_config(path)
        assert config["name"] == "mine"
        assert config["ct"]["window"] == "bone"
        assert config["ct"]["out_range"] == DEFAULT_CONFIG["ct"]["out_range"]  # sibling key kept
        assert slice_size(config) == (128, 96)


def test_extends_starts_from_a_shipped_config(tmp_path):
    path = tmp_path / "fast.yaml"
    path.write_text("extends: demo\nregistration:\n  common:\n    syn_iterations: [5, 0, 0]\n")
    config = load_config(path)
    assert config["name"] == "demo"
    assert registration_config(config, "t1").syn_iterations == (5, 0, 0)
    # The rest of demo's registration section is kept.
    assert registration_config(config, "t1").linear_shrink_factors == (8, 4)
    assert registration_config(config, "t1").level_unit == "mm"


def test_extends_relative_path_and_cycle(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nseed: 3\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child\n")
    config = load_config(tmp_path / "child.yaml")
    assert (config["name"], config["seed"]) == ("child", 3)
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "a.yaml")


def test_mapping_input_and_registration_layers():
    config = load_config({"registration": {"common": {"metric": "MI", "mi_bins": 16},
                                           "mr": {"mi_bins": 24}, "t2": {"mi_bins": 40}}})
    assert registration_config(config, "ct").mi_bins == 16
    assert registration_config(config, "ct").default_value == -1024.0
    assert registration_config(config, "t1").mi_bins == 24
    assert registration_config(config, "t2").mi_bins == 40
    assert pairing_config(config).transforms == ("Rigid",)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"slicez": {}}, "unknown config key 'slicez'"),
        ({"slices": {"sise": 3}}, "unknown config key 'slices.sise'"),
        ({"registration": {"common": {"iterations": 3}}}, "registration"),
        ({"registration": {"t3": {}}}, "registration.t3"),
        ({"ct": {"window": "lung-ish"}}, "ct.window"),
        ({"ct": {"out_range": [1, -1]}}, "ct.out_range"),
        ({"mr": {"normalization": {"method": "minmax"}}}, "mr.normalization.method"),
        ({"slices": {"size": 0}}, "slices.size"),
        ({"slices": {"selection": {"mode": "some"}}}, "slices"),
        ({"split": {"training": 0.9, "validation": 0.2, "test": 0.1}}, "split"),
        ({"input": {"layout": "bids"}}, "input.layout"),
        ({"input": {"dicom": {"missing": "reject"}}}, "input.dicom"),
        ({"artefact": {"mode": "atlas"}}, "artefact.mode"),
        ({"artefact": {"options": {"erosions": 2}}}, "artefact.options"),
        ({"registration": {"enabled": False}, "artefact": {"mode": "reference"}}, "artefact.mode"),
        ({"pairing": {"fixed": "t2", "moving": ["t2"]}}, "pairing"),
        ({"pseudonym": {"length": 4}}, "pseudonym.length"),
        ({"registration": {"output_min_spacing_mm": {"ct": -1}}}, "registration.output_min_spacing_mm"),
        ({"slices": 3}, "must be a mapping"),
        ({"ct_pairing": {"fixd": ["t2"]}}, "unknown config key 'ct_pairing.fixd'"),
        ({"ct_pairing": {"fixed": ["ct"]}}, "ct_pairing.fixed"),
        ({"ct_pairing": {"fixed": ["t2", "xray"]}}, "ct_pairing.fixed"),
        ({"ct_pairing": {"fixed": []}}, "ct_pairing.fixed"),
        ({"ct_pairing": {"fixed": ["t2", "T2"]}}, "ct_pairing.fixed"),
        ({"ct_pairing": {"register": "yes"}}, "ct_pairing"),
        ({"ct_pairing": {"registration": {"transforms": ["Bent"]}}}, "ct_pairing.registration"),
        ({"ct_pairing": {"enabled": True}, "artefact": {"mode": "reference"}}, "ct_pairing"),
        ({"input": {"layout": "ixi"}, "artefact": {"mode": "given"}}, "artefact.mode"),
        ({"input": {"layout": "demo"}, "mr": {"head_mask": {"method": "given"}}}, "mr.head_mask.method"),
    ],
)
def test_invalid_values_name_their_key(values, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(values)


def test_ct_pairing_is_off_by_default_and_pairs_the_demo_ct_with_t2_and_t1():
    default = load_config({})
    assert not default["ct_pairing"]["enabled"] and default["ct_pairing"]["fixed"] == ["t2"]
    assert ct_pairing_config(default).transforms == ("Rigid",)
    demo = load_config("demo")
    assert demo["ct_pairing"]["enabled"] and demo["ct_pairing"]["fixed"] == ["t2", "t1"]
    assert demo["ct_pairing"]["register"]
    # The CT's own parameters (its outside value, the demo's levels in mm), with mutual information
    # even where the CT's reference registration uses another metric.
    config = ct_pairing_config(load_config({"extends": "demo", "registration": {"ct": {"metric": "CC"}},
                                            "ct_pairing": {"fixed": "T1"}}))
    assert config.metric == "MI" and config.default_value == -1024.0 and config.level_unit == "mm"
    # Rigid, affine, then SyN for each scan's own warp; the SyN stage uses the same MI (no syn_metric).
    assert config.transforms == ("Rigid", "Affine", "SyN") and config.syn_metric is None and config.reference is None
    assert pairing_config(load_config("demo")).transforms == ("Rigid", "Affine", "SyN")
    assert load_config({"ct_pairing": {"fixed": "T1"}})["ct_pairing"]["fixed"] == ["t1"]
    # Without a CT mask the pairing needs none.
    assert load_config({"ct_pairing": {"enabled": True}, "artefact": {"enabled": False, "mode": "reference"}})


def test_unknown_name_and_missing_file():
    with pytest.raises(ConfigError, match="unknown config 'nope'.*demo, demo_paired, ixi, cq500"):
        load_config("nope")
    with pytest.raises(ConfigError, match="not a file"):
        load_config("/no/such/config.yaml")


def test_unreadable_and_non_mapping_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(listing)


def test_auto_slice_size_fits_the_volume():
    config = load_config({"slices": {"size": "auto"}})
    assert slice_size(config, (64, 40)) == (64, 64)
    assert slice_size(config, (65, 40)) == (128, 128)
    assert slice_size(config, (20, 10)) == (32, 32)
    assert slice_size(config, (512, 512)) == (256, 256)
    with pytest.raises(ValueError, match="auto"):
        slice_size(config)


def test_config_hash_depends_on_values_only():
    a = load_config("demo")
    b = load_config("demo")
    assert config_sha256(a) == config_sha256(b)
    b["seed"] = 1
    assert config_sha256(a) != config_sha256(b)


def test_merge_config_replaces_lists_and_keeps_free_sections_open():
    merged = merge_config(DEFAULT_CONFIG, {"input": {"modalities": ["t1"]}, "artefact": {"options": {"any": 1}}})
    assert merged["input"]["modalities"] == ["t1"]
    assert merged["artefact"]["options"] == {"any": 1}
    assert DEFAULT_CONFIG["input"]["modalities"] is None  # defaults untouched


def test_output_min_spacing_per_modality_or_for_all():
    assert output_min_spacing(load_config("demo"), "ct") == 1.0
    assert output_min_spacing(load_config("demo"), "t1") is None
    assert output_min_spacing(load_config({"registration": {"output_min_spacing_mm": 2}}), "t2") == 2.0
    assert output_min_spacing(load_config("ixi"), "t1") is None


@pytest.mark.parametrize("value, message", [("xray", "must be null or a modality"), (3, "must be null or a modality")])
def test_common_space_must_name_a_modality(value, message):
    config = load_config("demo")
    config["registration"]["common_space"] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_common_space_must_be_an_input_modality():
    config = load_config("demo")
    config["input"]["modalities"] = ["t1", "t2"]
    with pytest.raises(ConfigError, match="registration.common_space.*not one of input.modalities"):
        validate_config(config)
