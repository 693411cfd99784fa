"""MR signal and CT attenuation of each tissue, from relaxation times and Hounsfield units.

MR: each tissue's signal follows the steady-state equation of its sequence with BrainWeb's 1.5 T
tissue parameters (Collins et al., IEEE TMI 1998; Kwan et al., IEEE TMI 1999; the table of the
BrainWeb MRI simulator). A voxel's signal is the sum of its tissues' signals weighted by their
volume fractions, so partial volume at the cortex, the ventricle walls and the skull mixes signal
as a scanner does (magnetisation adds; labels do not).

- T1-weighted: 3D spoiled gradient echo (FLASH), TR 20 ms, TE 5 ms, flip angle 30°:
  ``S = PD · sin α · (1 − E1) / (1 − cos α · E1) · exp(−TE / T2*)``, ``E1 = exp(−TR / T1)``.
- T2-weighted: spin echo, TR 8000 ms, TE 100 ms (close to IXI's T2 protocol, TR 8178 ms, TE 100 ms):
  ``S = PD · (1 − exp(−TR / T1)) · exp(−TE / T2)``.

Cortical bone has no MR-visible proton density (BrainWeb sets the skull to zero); the diploë is
yellow marrow between the tables, modelled as half fat and half bone by volume. The equations do
not model J-coupling, so fat on the spin-echo T2 is darker than on a clinical turbo spin echo.

CT: Hounsfield units per tissue (brain 25–45 HU with grey above white matter, CSF 0–15, fat about
−100, cortical bone about 1600 and diploë about 750 HU). Attenuation adds linearly over a voxel's
tissues, so partial volume mixes HU by volume fraction.

Values vary between subjects by a few per cent (relaxation times and proton density ±3 %, brain HU
±1.5 HU), as healthy adults do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from preprocessing.demo.anatomy import (
    AIR,
    CORTICAL_BONE,
    CSF,
    DIPLOE,
    FAT,
    GREY_MATTER,
    SOFT_TISSUE,
    VENTRICLE,
    WHITE_MATTER,
)


@dataclass(frozen=True)
class RelaxationParameters:
    """A tissue's MR parameters at 1.5 T.

    Args:
        t1_ms: longitudinal relaxation time.
        t2_ms: transverse relaxation time.
        t2star_ms: effective transverse relaxation time (gradient echoes).
        proton_density: relative to water (CSF = 1).
    """

    t1_ms: float
    t2_ms: float
    t2star_ms: float
    proton_density: float


#: BrainWeb's 1.5 T tissue parameters; the scalp takes BrainWeb's muscle/skin class.
BRAINWEB_1_5T = {
    CSF: RelaxationParameters(2569.0, 329.0, 58.0, 1.00),
    GREY_MATTER: RelaxationParameters(833.0, 83.0, 69.0, 0.86),
    WHITE_MATTER: RelaxationParameters(500.0, 70.0, 61.0, 0.77),
    FAT: RelaxationParameters(350.0, 70.0, 58.0, 1.00),
    SOFT_TISSUE: RelaxationParameters(900.0, 47.0, 30.0, 1.00),
}
#: Volume fraction of fat in the diploë (the rest is bone, MR-invisible).
DIPLOE_FAT_FRACTION = 0.5


@dataclass(frozen=True)
class SpoiledGradientEcho:
    """Steady-state spoiled gradient echo (FLASH)."""

    tr_ms: float
    te_ms: float
    flip_deg: float

    def signal(self, tissue: RelaxationParameters) -> float:
        """Signal per unit volume of ``tissue``."""
        e1 = math.exp(-self.tr_ms / tissue.t1_ms)
        alpha = math.radians(self.flip_deg)
        return (tissue.proton_density * math.sin(alpha) * (1.0 - e1) / (1.0 - math.cos(alpha) * e1)
                * math.exp(-self.te_ms / tissue.t2star_ms))


@dataclass(frozen=True)
class SpinEcho:
    """Spin echo with full refocusing."""

    tr_ms: float
    te_ms: float

    def signal(self, tissue: RelaxationParameters) -> float:
        """Signal per unit volume of ``tissue``."""
        return tissue.proton_density * (1.0 - math.exp(-self.tr_ms / tissue.t1_ms)) * math.exp(-self.te_ms / tissue.t2_ms)


SEQUENCES = {"t1": SpoiledGradientEcho(tr_ms=20.0, te_ms=5.0, flip_deg=30.0), "t2": SpinEcho(tr_ms=8000.0, te_ms=100.0)}
#: Receiver gain: the nominal white matter of the T1 and CSF of the T2 land near these scanner
#: units, the range of IXI's integer images.
REFERENCE_LEVELS = {"t1": (WHITE_MATTER, 800.0), "t2": (CSF, 1350.0)}

#: Hounsfield units per tissue.
CT_HOUNSFIELD = {AIR: -1000.0, SOFT_TISSUE: 45.0, FAT: -100.0, CORTICAL_BONE: 1600.0, CSF: 8.0,
                 GREY_MATTER: 38.0, WHITE_MATTER: 28.0, VENTRICLE: 8.0, DIPLOE: 750.0}


def mr_tissue_signals(sequence, parameters: dict[int, RelaxationParameters], gain: float) -> dict[int, float]:
    """Signal of a voxel filled with each tissue label, in scanner units.

    Args:
        sequence: a sequence with a ``signal(parameters)`` method.
        parameters: relaxation parameters per tissue (CSF, GM, WM, fat, soft tissue).
        gain: scanner units per unit signal.

    Returns:
        ``{label: signal}`` for every label of the anatomy.
    """
    signal = {label: gain * sequence.signal(tissue) for label, tissue in parameters.items()}
    signal[VENTRICLE] = signal[CSF]
    signal[AIR] = 0.0
    signal[CORTICAL_BONE] = 0.0
    signal[DIPLOE] = DIPLOE_FAT_FRACTION * signal[FAT]
    return signal


def subject_tissue_values(rng: np.random.Generator) -> dict[str, dict[int, float]]:
    """One subject's value per tissue label for ``ct`` (HU), ``t1`` and ``t2`` (scanner units).

    Relaxation times and proton densities vary by ±3 % per tissue and subject; the receiver gain is
    the nominal one, so that differences between subjects are tissue differences. CT values of the
    brain vary by ±1.5 HU (relative variation would swap grey and white matter, 10 HU apart), the
    others by ±3 %.

    Args:
        rng: random generator.

    Returns:
        ``{modality: {label: value}}``.
    """
    parameters = {
        label: RelaxationParameters(p.t1_ms * rng.uniform(0.97, 1.03), p.t2_ms * rng.uniform(0.97, 1.03),
                                    p.t2star_ms * rng.uniform(0.97, 1.03), p.proton_density * rng.uniform(0.97, 1.03))
        for label, p in BRAINWEB_1_5T.items()
    }
    values = {}
    for modality, sequence in SEQUENCES.items():
        reference_label, level = REFERENCE_LEVELS[modality]
        gain = level / sequence.signal(BRAINWEB_1_5T[reference_label])
        values[modality] = mr_tissue_signals(sequence, parameters, gain)
    values["ct"] = {
        label: (hu if label == AIR else
                float(hu + rng.uniform(-1.5, 1.5)) if abs(hu) < 100 else float(hu * rng.uniform(0.97, 1.03)))
        for label, hu in CT_HOUNSFIELD.items()
    }
    return values
