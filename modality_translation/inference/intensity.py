"""Intensity mapping between a modality's volume and a translation network's value range.

A 2D translation network sees every modality on one scale, usually ``[-1, 1]`` (Tanh outputs):

- **CT**: Hounsfield units are windowed (``preprocessing.windowing.hu_to_window``: clipped to the
  window, scaled to ``out_range``); a network output maps back to HU with the window's inverse
  (``window_to_hu``), exact for values inside the window.
- **MR** (T1, T2, PD, ...): intensities have no unit, so the volume is normalised inside its head
  mask exactly as the preprocessing did for the training slices: ``"percentile"``
  (``percentile_normalize``: the ``lower``/``upper`` percentiles inside the mask map to ``out_range``,
  clipped, -1 outside the mask, as the cohort runner writes it), or ``"zscore"`` (``zscore_normalize``:
  mean 0 and standard deviation 1 inside the mask, 0 outside). A network's MR output stays on that
  scale: an MR volume has no absolute unit to return to.

:meth:`IntensityMapping.check_intensities` refuses, naming the file, a volume whose values cannot be
of the modality and scale it is used as: values beyond the network range for a volume declared on
it, a CT in Hounsfield units given where an MR is expected (air at -1000 HU: no MR magnitude is
negative), values within the network range where HU are expected. It checks what is plainly
checkable; a windowed CT and a normalised MR share one range and are told apart only by their names.

Volumes that the preprocessing already normalised or windowed (the cohort's ``t1``, ``t2`` and
windowed ``ct`` volumes; ``ct_hu`` is in HU) are declared with ``on_network_scale=True`` and pass
through :meth:`IntensityMapping.to_network` unchanged.

:class:`IntensityMapping` holds these settings as plain JSON values, so a bundle config can build it
with ``_target_`` or derive it from what the cohort's preprocessing recorded: the ``ct_window`` and
``normalisation`` entries of its ``dataset.json``, or its configuration
(:meth:`IntensityMapping.from_preprocessing_config`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medgan_common import dataset_keys
from medgan_common.errors import InputReadError, PreprocessingError
from preprocessing.normalization import head_mask_ct, head_mask_mr, percentile_normalize, zscore_normalize
from preprocessing.windowing import WindowSpec, get_window, hu_to_window, window_to_hu


#: MR normalisation methods of the preprocessing.
MR_NORMALIZATION_METHODS = ("percentile", "zscore")

#: HU at or below which a voxel is air in a CT; no MR magnitude (nor a normalised MR) goes this low.
HU_AIR_THRESHOLD = -500.0
#: Fraction of air voxels from which a volume is taken for a CT in HU (a head CT has tens of percent).
HU_AIR_MIN_FRACTION = 0.01
#: Tolerance beyond the network range, as a fraction of its span (interpolation overshoot, rounding).
RANGE_TOLERANCE = 0.01


class IntensityMismatchError(PreprocessingError):
    """A volume's intensities cannot be of the modality or scale it is used as (e.g. a CT in HU given as an MR)."""


_NORMALIZATION_OPTIONS = {"percentile": {"lower", "upper", "outside_value"}, "zscore": {"outside_value"}}
_HEAD_MASK_OPTIONS = {"method", "noise_quantile", "closing_radius", "slice_fill_axis"}


def _read_mapping(path: str | os.PathLike) -> Mapping[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise InputReadError(path, f"cannot read the preprocessing record: {exc}") from exc
    if not isinstance(data, Mapping):
        raise InputReadError(path, f"the preprocessing record must be a mapping, got {type(data).__name__}")
    return data


#: HU of air: what a synthetic CT holds where there is no head (the floor of SynthRAD's HU clip).
CT_AIR_HU = -1024.0


def _check_options(options: Mapping[str, Any], known: set[str], what: str) -> dict[str, Any]:
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown}; known: {sorted(known) or 'none'}")
    return dict(options)


@dataclass(frozen=True)
class IntensityMapping:
    """How one modality's intensities map to the network's range and back.

    Args:
        modality: ``"ct"`` (Hounsfield units) or an MR modality (``"t1"``, ``"t2"``, ``"pd"``, ...);
            case-insensitive.
        window: CT window (preset name, ``{"center", "width"}`` in HU or ``[center, width]``); CT only.
        out_range: the network's value range (``[-1, 1]`` for Tanh generators).
        normalization: MR only: ``{"method": "percentile", "lower": 0.5, "upper": 99.5}`` (default) or
            ``{"method": "zscore"}``; ``outside_value`` (value outside the head mask; default
            ``out_range[0]`` for percentiles, 0 for z-scores, as the cohort runner writes them) is also
            accepted. The preprocessing's ``out_range`` key is accepted if it equals ``out_range``.
        head_mask: MR only: options of ``preprocessing.normalization.head_mask_mr`` used when no head
            mask is given to :meth:`to_network` (default Otsu's threshold).
        on_network_scale: the volumes given to :meth:`to_network` are already normalised (MR) or
            windowed (CT) to ``out_range`` by the preprocessing; they pass through unchanged.

    Raises:
        ValueError: an unknown normalisation method or option, an invalid window or range.
    """

    modality: str
    window: WindowSpec = "brain"
    out_range: Sequence[float] = (-1.0, 1.0)
    normalization: Mapping[str, Any] = field(default_factory=lambda: {"method": "percentile", "lower": 0.5, "upper": 99.5})
    head_mask: Mapping[str, Any] = field(default_factory=lambda: {"method": "otsu", "closing_radius": 0})
    on_network_scale: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "modality", str(self.modality).strip().lower())
        low, high = (float(v) for v in self.out_range)
        if not high > low:
            raise ValueError(f"out_range must be an increasing pair, got {tuple(self.out_range)}")
        object.__setattr__(self, "out_range", (low, high))
        object.__setattr__(self, "window", get_window(self.window))
        normalization = dict(self.normalization or {})
        method = normalization.pop("method", "percentile")
        if method not in MR_NORMALIZATION_METHODS:
            raise ValueError(f"unknown MR normalisation method {method!r}; use one of {', '.join(MR_NORMALIZATION_METHODS)}")
        recorded_range = normalization.pop("out_range", None)
        if recorded_range is not None and tuple(float(v) for v in recorded_range) != self.out_range:
            raise ValueError(
                f"the MR normalisation range {tuple(recorded_range)} differs from the network range {self.out_range}"
            )
        options = _check_options(normalization, _NORMALIZATION_OPTIONS[method], f"{method!r} normalisation")
        options.setdefault("outside_value", low if method == "percentile" else 0.0)
        object.__setattr__(self, "normalization", {"method": method, **options})
        object.__setattr__(self, "head_mask", _check_options(self.head_mask or {}, _HEAD_MASK_OPTIONS, "head mask"))

    @classmethod
    def from_preprocessing_config(
        cls, modality: str, config: Mapping[str, Any] | str | os.PathLike, on_network_scale: bool = False
    ) -> IntensityMapping:
        """Build the mapping a cohort was prepared with from what its preprocessing recorded.

        Args:
            modality: ``"ct"`` or an MR modality.
            config: the cohort's ``dataset.json`` (its ``"ct_window"`` and ``"normalisation"`` entries),
                the preprocessing configuration (``ct`` section ``{"window", "out_range"}``, ``mr``
                section ``{"head_mask", "normalization"}``), either as a mapping or as a JSON/YAML file;
                missing entries take this class's defaults.
            on_network_scale: see the class; ``True`` for the cohort's normalised/windowed volumes.

        Returns:
            The mapping.

        Raises:
            InputReadError: a file that does not exist or cannot be parsed.
        """
        if not isinstance(config, Mapping):
            config = _read_mapping(config)
        ct = dict(config.get("ct") or {})
        mr = dict(config.get("mr") or {})
        if isinstance(config.get(dataset_keys.CT_WINDOW), Mapping):  # dataset.json
            window = config[dataset_keys.CT_WINDOW]
            ct = {"window": {"center": window["center"], "width": window["width"]}, "out_range": window.get("out_range")}
        normalization = config.get(dataset_keys.NORMALISATION) or mr.get("normalization")
        is_ct = str(modality).strip().lower() == "ct"
        recorded = ct.get("out_range") if is_ct else (normalization or {}).get("out_range")
        kwargs: dict[str, Any] = {"out_range": recorded or (-1.0, 1.0), "on_network_scale": on_network_scale}
        if "window" in ct:
            kwargs["window"] = ct["window"]
        if normalization:
            kwargs["normalization"] = {key: value for key, value in normalization.items() if key != "out_range"}
        if "head_mask" in mr:
            kwargs["head_mask"] = mr["head_mask"]
        return cls(modality, **kwargs)

    @classmethod
    def resolve(
        cls,
        modality: str,
        mapping: IntensityMapping | Mapping[str, Any] | None = None,
        preprocessing: Mapping[str, Any] | str | os.PathLike | None = None,
    ) -> IntensityMapping:
        """The mapping of ``modality``: ``mapping`` itself, or the preprocessing's with ``mapping``'s keys overriding.

        Args:
            modality: ``"ct"`` or an MR modality.
            mapping: an :class:`IntensityMapping` (used as is), or keyword arguments of this class
                (without ``modality``) overriding those derived from ``preprocessing``.
            preprocessing: the cohort's ``dataset.json`` or preprocessing configuration, a mapping or a
                file (see :meth:`from_preprocessing_config`).

        Raises:
            ValueError: a mapping of another modality, or invalid settings.
        """
        if isinstance(mapping, IntensityMapping):
            if mapping.modality != str(modality).strip().lower():
                raise ValueError(f"intensity mapping of {mapping.modality!r} given for modality {modality!r}")
            return mapping
        base = cls.from_preprocessing_config(modality, preprocessing or {})
        return replace(base, **dict(mapping or {})) if mapping else base

    @property
    def is_ct(self) -> bool:
        """Whether the modality is CT (Hounsfield units)."""
        return self.modality == "ct"

    @property
    def air_value(self) -> float:
        """The air around a head in the units :meth:`from_network` returns: :data:`CT_AIR_HU` for CT, the
        normalisation's ``outside_value`` for MR (whose outputs stay on the network scale)."""
        return CT_AIR_HU if self.is_ct else self.background_value

    def input_head_mask(self, volume: np.ndarray) -> np.ndarray:
        """Head mask of a volume given as :meth:`to_network` takes it.

        A CT on the network scale is mapped back to HU first (the window's floor is air). An MR is
        masked as it is: Otsu's threshold does not depend on the normalisation's affine scaling.

        Raises:
            PreprocessingError: no head found, NaN values.
        """
        volume = np.asarray(volume, dtype=np.float32)
        if self.is_ct and self.on_network_scale:
            volume = self.from_network(volume)
        return self.compute_head_mask(volume)

    @property
    def background_value(self) -> float:
        """Network-scale value of the air around the head: what padding must be filled with.

        Air is below every CT window (``out_range[0]``); MR is set to ``outside_value`` outside the head.
        """
        if self.is_ct:
            return self.out_range[0]
        return float(self.normalization["outside_value"])

    @property
    def data_range(self) -> float | None:
        """Span of the network scale (2.0 for ``[-1, 1]``); ``None`` for unbounded z-scores."""
        if not self.is_ct and self.normalization["method"] == "zscore":
            return None
        return self.out_range[1] - self.out_range[0]

    def check_intensities(self, volume: np.ndarray, path: str | os.PathLike | None = None, what: str = "volume",
                          acquired: bool = False) -> None:
        """Raise unless ``volume``'s values can be of this modality on this mapping's scale.

        - declared ``on_network_scale`` (bounded scale): every value within ``out_range`` (1 % of its
          span of tolerance);
        - an MR (raw or z-scored): fewer than 1 % of the voxels at or below -500 (the air of a CT in HU);
        - a CT in HU: values that do not all lie within ``out_range`` (those would be windowed or
          network-scale values); for an ``acquired`` scan also at least 1 % of the voxels at or below
          -500 HU (the air around a head, which an MR has not; a model's prediction may lack it).

        Args:
            volume: the array (finite values).
            path: its file, named in the error.
            what: what the volume is, for the message (``"volume to translate"``, ``"prediction"``).
            acquired: the volume is a scan as acquired (the input of a translation), not a prediction.

        Raises:
            IntensityMismatchError: naming the file, the expected modality and scale, and the values found.
        """
        values = np.asarray(volume)
        low, high = float(values.min()), float(values.max())
        found = f"its values span [{low:.6g}, {high:.6g}]"
        air_fraction = float(np.count_nonzero(values <= HU_AIR_THRESHOLD)) / max(values.size, 1)
        looks_like_ct_hu = air_fraction >= HU_AIR_MIN_FRACTION
        range_low, range_high = self.out_range
        tolerance = RANGE_TOLERANCE * (range_high - range_low)
        within_range = low >= range_low - tolerance and high <= range_high + tolerance
        name = "CT" if self.is_ct else f"{self.modality.upper()} (MR)"
        if self.on_network_scale and self.data_range is not None:
            if not within_range:
                hint = ""
                if looks_like_ct_hu:
                    hint = (f"; {air_fraction:.0%} of its voxels are at or below {HU_AIR_THRESHOLD:g}: "
                            "a CT in Hounsfield units" + ("" if self.is_ct else ", not an MR"))
                raise IntensityMismatchError(
                    path, f"the {what} should be {name} on the network scale [{range_low:g}, {range_high:g}], "
                    f"but {found}{hint}")
        elif self.is_ct:
            if within_range:
                raise IntensityMismatchError(
                    path, f"the {what} should be CT in Hounsfield units, but {found}, within the network range "
                    f"[{range_low:g}, {range_high:g}]: windowed or network-scale values, not HU")
            if acquired and not looks_like_ct_hu:
                raise IntensityMismatchError(
                    path, f"the {what} should be CT in Hounsfield units, but {found} with {air_fraction:.1%} of its "
                    f"voxels at or below {HU_AIR_THRESHOLD:g} HU: no air around the head, so not a CT in HU "
                    "(an MR?)")
        elif looks_like_ct_hu:
            raise IntensityMismatchError(
                path, f"the {what} should be {name} intensities, but {air_fraction:.0%} of its voxels are at or "
                f"below {HU_AIR_THRESHOLD:g} ({found}): the air of a CT in Hounsfield units, not an MR")

    def compute_head_mask(self, volume: np.ndarray) -> np.ndarray:
        """Head mask of a volume of this modality (``head_mask_ct`` for CT, ``head_mask_mr`` with :attr:`head_mask`).

        Raises:
            PreprocessingError: no head found, NaN values.
        """
        if self.is_ct:
            return head_mask_ct(volume)
        return head_mask_mr(volume, **self.head_mask)

    def to_network(self, volume: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Map a volume of this modality to the network scale.

        Args:
            volume: CT in HU, or MR intensities ([z, y, x]; any shape for CT); with
                ``on_network_scale``, the already normalised/windowed volume.
            mask: MR head mask (same shape); computed with :meth:`compute_head_mask` when ``None``.
                Unused for CT and with ``on_network_scale``.

        Returns:
            float32 array on the network scale.

        Raises:
            PreprocessingError: an empty mask, mismatched shapes, a constant image inside the mask.
        """
        if self.on_network_scale:
            return np.asarray(volume, dtype=np.float32)
        if self.is_ct:
            return np.asarray(hu_to_window(np.asarray(volume, dtype=np.float32), self.window, self.out_range))
        method = self.normalization["method"]
        if mask is None:
            mask = self.compute_head_mask(volume)
        options = {key: value for key, value in self.normalization.items() if key != "method"}
        if method == "zscore":
            return zscore_normalize(volume, mask, **options)
        return percentile_normalize(volume, mask, out_range=self.out_range, **options)

    def from_network(self, values: np.ndarray) -> np.ndarray:
        """Map network outputs of this modality back: HU for CT (window inverse), unchanged for MR.

        Args:
            values: network outputs; for CT, values beyond ``out_range`` are clipped to the window's edges.

        Returns:
            float32 array.
        """
        if self.is_ct:
            return np.asarray(window_to_hu(np.asarray(values, dtype=np.float32), self.window, self.out_range))
        return np.asarray(values, dtype=np.float32)
