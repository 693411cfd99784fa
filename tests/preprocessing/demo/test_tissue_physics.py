"""MR signal equations, BrainWeb's tissue parameters and CT values of the demo."""

from __future__ import annotations

import math

import numpy as np
import pytest

from preprocessing.demo.anatomy import (
    AIR, CORTICAL_BONE, CSF, DIPLOE, FAT, GREY_MATTER, SOFT_TISSUE, VENTRICLE, WHITE_MATTER,
)
from preprocessing.demo.tissue_physics import (
    BRAINWEB_1_5T, CT_HOUNSFIELD, SEQUENCES, RelaxationParameters, SpinEcho, SpoiledGradientEcho,
    mr_tissue_signals, subject_tissue_values,
)


def test_spin_echo_equation():
    tissue = RelaxationParameters(t1_ms=1000.0, t2_ms=100.0, t2star_ms=50.0, proton_density=0.8)
    signal = SpinEcho(tr_ms=1000.0, te_ms=100.0).signal(tissue)
    assert signal == pytest.approx(0.8 * (1 - math.exp(-1)) * math.exp(-1))


def test_spoiled_gradient_echo_equation():
    tissue = RelaxationParameters(t1_ms=1000.0, t2_ms=100.0, t2star_ms=50.0, proton_density=1.0)
    # At the Ernst angle the steady state is sqrt((1 - E1) / (1 + E1)) times the decay at TE.
    e1 = math.exp(-10.0 / 1000.0)
    ernst = math.degrees(math.acos(e1))
    signal = SpoiledGradientEcho(tr_ms=10.0, te_ms=5.0, flip_deg=ernst).signal(tissue)
    assert signal == pytest.approx(math.sqrt((1 - e1) / (1 + e1)) * math.exp(-5.0 / 50.0))
    # A long TR recovers the whole magnetisation: PD sin(alpha).
    assert SpoiledGradientEcho(tr_ms=1e6, te_ms=0.0, flip_deg=30.0).signal(tissue) == pytest.approx(0.5)


def test_nominal_contrasts_follow_real_scans():
    t1 = mr_tissue_signals(SEQUENCES["t1"], BRAINWEB_1_5T, 1.0)
    t2 = mr_tissue_signals(SEQUENCES["t2"], BRAINWEB_1_5T, 1.0)
    assert t1[FAT] > t1[WHITE_MATTER] > t1[GREY_MATTER] > t1[CSF] > t1[CORTICAL_BONE] == 0
    assert t1[WHITE_MATTER] / t1[GREY_MATTER] > 1.2, "grey/white contrast of a T1-weighted scan"
    assert t2[CSF] > t2[GREY_MATTER] > t2[WHITE_MATTER] > t2[CORTICAL_BONE] == 0
    assert t1[VENTRICLE] == t1[CSF] and t2[VENTRICLE] == t2[CSF]
    assert t1[DIPLOE] == pytest.approx(0.5 * t1[FAT])
    ct = CT_HOUNSFIELD
    assert ct[CORTICAL_BONE] > 10 * ct[GREY_MATTER]
    assert ct[GREY_MATTER] > ct[WHITE_MATTER] > ct[CSF] > ct[FAT] > ct[AIR] == -1000
    assert 25 <= ct[WHITE_MATTER] < ct[GREY_MATTER] <= 45 and 0 <= ct[CSF] <= 15 and -110 <= ct[FAT] <= -90
    assert 700 <= ct[DIPLOE] < ct[CORTICAL_BONE] <= 2000


def test_subject_values_vary_a_little_and_keep_the_order():
    a, b = (subject_tissue_values(np.random.default_rng(seed)) for seed in (0, 1))
    for modality in ("t1", "t2", "ct"):
        assert a[modality] != b[modality]
        for label, value in a[modality].items():
            other = b[modality][label]
            # Relative variation, or +-1.5 HU each for the brain's CT values.
            assert abs(value - other) <= max(0.12 * abs(value), 3.0), (modality, label)
    for values in (a, b):
        assert values["t1"][WHITE_MATTER] > values["t1"][GREY_MATTER] > values["t1"][CSF]
        assert values["t2"][CSF] > values["t2"][GREY_MATTER] > values["t2"][WHITE_MATTER]
        assert values["ct"][GREY_MATTER] > values["ct"][WHITE_MATTER] > values["ct"][CSF]
        # The receiver gain puts the reference tissues near the levels of IXI's integer images.
        assert 700 < values["t1"][WHITE_MATTER] < 900 and 1200 < values["t2"][CSF] < 1500
        assert values["ct"][AIR] == -1000.0 and values["t1"][SOFT_TISSUE] > 0
