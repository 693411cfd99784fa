"""Registration of volumes to a reference with ANTs: a rigid stage, then a SyN deformable stage.

The registration itself is ANTs' ``antsRegistration`` run in-process through ANTsPy. A list of
stage names (``("Rigid", "SyN")``) is turned into ``antsRegistration`` arguments here so that every
parameter (metric, sampling, iterations, shrink factors and smoothing per level) is configurable;
any ANTsPy ``type_of_transform`` name (``"antsRegistrationSyNQuick[s]"``, ``"SyNRA"``...) is passed
to ANTsPy's own presets instead.

Conventions:

* Volumes enter and leave as ``SimpleITK.Image`` in ITK's LPS physical space. ANTs uses the same
  space, so :func:`sitk_to_ants` / :func:`ants_to_sitk` only reorder the array axes and copy
  origin, spacing and direction unchanged.
* ``forward_transforms`` map the moving image onto the fixed grid (ANTs ``fwdtransforms`` order,
  for :func:`apply_transforms`); ``inverse_transforms`` with ``inverse_invert_flags`` map the fixed
  image onto the moving grid.
* ANTs writes its transforms to files. They are written into a private temporary folder owned by
  the :class:`RegistrationResult`; :func:`save_transforms` copies them to the subject folder under
  stable names and deletes the temporary folder (as do ``result.cleanup()``, leaving a ``with``
  block, or garbage collection).

Determinism: ITK reads its thread count (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``) once, when ANTs
first uses it, and ANTs reads ``ANTS_RANDOM_SEED``. A cohort runner must therefore call
:func:`configure_determinism` in each worker process *before* anything imports ``ants``; this
module only imports ``ants`` inside its functions so that calling it after importing this module
still works. The default configuration also passes ``--random-seed`` and uses regular (not
random) sampling, so single-threaded reruns give byte-identical results; multi-threaded runs do
not (ANTs' threaded metric sums are not reproducible).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from medgan_common.atomic import atomic_path, atomic_write_json
from medgan_common.errors import PreprocessingError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import ants

DEFAULT_RANDOM_SEED = 20240601
LINEAR_TRANSFORMS = ("Translation", "Rigid", "Similarity", "Affine")
DEFORMABLE_TRANSFORMS = ("SyN",)
# antsRegistration metric names; "Mattes" and "MI" are both Mattes mutual information.
METRICS = {"MI": "MI", "MATTES": "MI", "CC": "CC", "GC": "GC", "MEANSQUARES": "MeanSquares"}
SAMPLING_STRATEGIES = ("Regular", "Random", "None")
IMAGE_INTERPOLATORS = ("linear", "bSpline", "gaussian", "cosineWindowedSinc", "welchWindowedSinc",
                       "hammingWindowedSinc", "lanczosWindowedSinc")
LABEL_INTERPOLATORS = ("nearestNeighbor", "genericLabel", "multiLabel")
INITIALIZATIONS = {"geometric_center": 0, "center_of_mass": 1, "origin": 2}
TRANSFORMS_MANIFEST = "transforms.json"


def configure_determinism(seed: int = DEFAULT_RANDOM_SEED, threads: int | None = 1) -> None:
    """Fix ANTs' random seed and the ITK thread count for reproducible registrations.

    Must be called in each worker process before ``ants`` is imported (strictly: before its
    first registration): ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once, on first use.
    With one thread and a fixed seed a registration gives byte-identical output on every run;
    with two or more threads ANTs' multi-threaded metric sums differ from run to run and so do the
    results (measured). A cohort runner therefore runs one single-threaded worker per core.

    Args:
        seed: value for ``ANTS_RANDOM_SEED`` (used by ANTs' sampling when no explicit seed is given).
        threads: ITK thread count for ANTs and SimpleITK; ``None`` leaves the thread count alone.

    Raises:
        ValueError: if ``threads`` is smaller than 1.
    """
    os.environ["ANTS_RANDOM_SEED"] = str(int(seed))
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))
    # SimpleITK carries its own copy of ITK, which can be told directly.
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    if "ants" in sys.modules:
        warnings.warn(
            "configure_determinism() was called after 'ants' was imported: ANTs may already have "
            "fixed its thread count; call it first in each worker process.",
            RuntimeWarning,
            stacklevel=2,
        )


@dataclass(frozen=True)
class RegistrationConfig:
    """Parameters of one registration.

    The defaults (rigid at 1/8 and 1/4 resolution, then SyN at 1/8, 1/4 and 1/2 resolution with
    100, 70 and 10 iterations, Mattes mutual information, single precision, regular sampling with
    a fixed seed) register a 256x256x150 1 mm MR volume with 47 s of CPU time, under a minute on
    two cores, as accurately (NCC) as ANTs' antsRegistrationSyNQuick with 138 s
    (``benchmarks/bench_registration.py``). A full-resolution SyN level, even with no iterations,
    doubles the time and writes 8x larger warp files for no measurable gain in NCC; each SyN
    iteration at 1/2 resolution costs as much as the whole 1/4 level, hence only 10.

    Attributes:
        transforms: stage names in order (from ``LINEAR_TRANSFORMS`` and ``"SyN"``), or one ANTsPy
            ``type_of_transform`` name (e.g. ``"antsRegistrationSyNQuick[s]"``) to use ANTsPy's
            preset, which then sets every parameter below except the masks, ``float_precision``
            and ``default_value``.
        metric: metric of the linear stages: ``"MI"`` (Mattes mutual information; any pair of
            modalities, required for CT<->MR), ``"CC"``, ``"GC"`` or ``"MeanSquares"`` (one modality).
        syn_metric: metric of the SyN stage; ``None`` uses ``metric``.
        mi_bins: histogram bins of the mutual information metric.
        cc_radius: neighbourhood radius (voxels) of the CC metric.
        sampling: metric sampling of the linear stages (``"Regular"``, ``"Random"`` or ``"None"``
            for all voxels); the SyN stage always uses all voxels.
        sampling_rate: fraction of voxels sampled by the linear stages.
        linear_iterations: iterations per level of the linear stages (coarse to fine).
        linear_shrink_factors: downsampling factor per level of the linear stages.
        linear_smoothing_sigmas: Gaussian smoothing per level (voxels) of the linear stages.
        linear_gradient_step: gradient step of the linear stages.
        syn_iterations: iterations per level of the SyN stage.
        syn_shrink_factors: downsampling factor per level of the SyN stage.
        syn_smoothing_sigmas: Gaussian smoothing per level (voxels) of the SyN stage.
        syn_gradient_step: SyN gradient step.
        syn_update_sigma: smoothing (voxels) of the SyN update field.
        syn_total_sigma: smoothing (voxels) of the SyN total field.
        convergence_threshold: stop a level when the metric changes less than this...
        convergence_window: ...over this many iterations.
        initialization: initial alignment: ``"center_of_mass"``, ``"geometric_center"``,
            ``"origin"`` or ``"identity"``.
        histogram_matching: match the moving histogram to the fixed one (same modality only).
        winsorize: lower and upper intensity quantiles clipped before registration, or ``None``.
        float_precision: compute in single precision (faster, half the memory).
        random_seed: seed for the metric sampling; ``None`` lets ANTs use ``ANTS_RANDOM_SEED``.
        default_value: value of warped voxels that fall outside the moving image (-1000 for CT).
        reference: reference for :func:`choose_reference`: a key of the candidate images or the
            path of an image file; ``None`` chooses automatically.
        reference_spacing_mm: voxel size of the downsampled copies compared by :func:`choose_reference`.
        reference_max_comparisons: most other images each candidate is compared with.
        level_unit: unit of the shrink factors and smoothing sigmas. ``"voxels"``: ANTs' own
            (downsampling factors, sigmas in voxels). ``"mm"``: each shrink factor is the voxel
            size of its level in millimetres (the factor passed to ANTs is that size over the
            fixed image's finest spacing, rounded, at least 1) and the sigmas are in millimetres,
            so one schedule suits a 4 mm and a 1 mm volume alike.
    """

    transforms: tuple[str, ...] | str = ("Rigid", "SyN")
    metric: str = "MI"
    syn_metric: str | None = None
    mi_bins: int = 32
    cc_radius: int = 2
    sampling: str = "Regular"
    sampling_rate: float = 0.25
    linear_iterations: tuple[int, ...] = (200, 100)
    linear_shrink_factors: tuple[int, ...] = (8, 4)
    linear_smoothing_sigmas: tuple[float, ...] = (3, 2)
    linear_gradient_step: float = 0.1
    syn_iterations: tuple[int, ...] = (100, 70, 10)
    syn_shrink_factors: tuple[int, ...] = (8, 4, 2)
    syn_smoothing_sigmas: tuple[float, ...] = (3, 2, 1)
    syn_gradient_step: float = 0.2
    syn_update_sigma: float = 3.0
    syn_total_sigma: float = 0.0
    convergence_threshold: float = 1e-6
    convergence_window: int = 10
    initialization: str = "center_of_mass"
    histogram_matching: bool = False
    winsorize: tuple[float, float] | None = (0.005, 0.995)
    float_precision: bool = True
    random_seed: int | None = DEFAULT_RANDOM_SEED
    default_value: float = 0.0
    reference: str | None = None
    reference_spacing_mm: float = 4.0
    reference_max_comparisons: int = 12
    level_unit: str = "voxels"

    def __post_init__(self) -> None:
        if isinstance(self.transforms, str):
            stages: tuple[str, ...] = ()
        else:
            stages = tuple(self.transforms)
            object.__setattr__(self, "transforms", stages)
            if not stages:
                raise ValueError("transforms must name at least one stage")
            unknown = [s for s in stages if s not in LINEAR_TRANSFORMS + DEFORMABLE_TRANSFORMS]
            if unknown:
                raise ValueError(
                    f"unknown transform stage(s) {unknown}; use {LINEAR_TRANSFORMS + DEFORMABLE_TRANSFORMS} "
                    "or one ANTsPy type_of_transform name as a string"
                )
        for name in ("metric", "syn_metric"):
            value = getattr(self, name)
            if value is not None and value.upper() not in METRICS:
                raise ValueError(f"{name} must be one of {sorted(set(METRICS.values()))}, got {value!r}")
        if self.level_unit not in ("voxels", "mm"):
            raise ValueError(f"level_unit must be 'voxels' or 'mm', got {self.level_unit!r}")
        if self.sampling not in SAMPLING_STRATEGIES:
            raise ValueError(f"sampling must be one of {SAMPLING_STRATEGIES}, got {self.sampling!r}")
        if not 0 < self.sampling_rate <= 1:
            raise ValueError(f"sampling_rate must be in (0, 1], got {self.sampling_rate}")
        if self.initialization not in (*INITIALIZATIONS, "identity"):
            raise ValueError(f"initialization must be one of {(*INITIALIZATIONS, 'identity')}, got {self.initialization!r}")
        for prefix in ("linear", "syn"):
            levels = [tuple(getattr(self, f"{prefix}_{part}")) for part in ("iterations", "shrink_factors", "smoothing_sigmas")]
            for part, value in zip(("iterations", "shrink_factors", "smoothing_sigmas"), levels):
                object.__setattr__(self, f"{prefix}_{part}", value)
            if not levels[0] or len({len(v) for v in levels}) != 1:
                raise ValueError(
                    f"{prefix}_iterations, {prefix}_shrink_factors and {prefix}_smoothing_sigmas must "
                    f"have one entry per level and the same length, got {levels}"
                )
            if any(f < 1 for f in levels[1]):
                raise ValueError(f"{prefix}_shrink_factors must be >= 1, got {levels[1]}")
        if self.winsorize is not None:
            low, high = self.winsorize
            if not 0 <= low < high <= 1:
                raise ValueError(f"winsorize must be two quantiles 0 <= low < high <= 1, got {self.winsorize}")

    def replace(self, **changes: Any) -> "RegistrationConfig":
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "RegistrationConfig":
        """Build a configuration from a mapping (e.g. a YAML section), rejecting unknown keys.

        Raises:
            ValueError: if a key is not a configuration field.
        """
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown registration option(s) {unknown}; known: {sorted(known)}")
        for key, value in values.items():
            if isinstance(value, list):
                values[key] = tuple(value)
        return cls(**values)


@dataclass
class RegistrationResult:
    """Output of :func:`register`.

    Attributes:
        warped: the moving image resampled onto the fixed grid (float32).
        forward_transforms: transform files mapping the moving image onto the fixed grid
            (order for :func:`apply_transforms`).
        inverse_transforms: transform files mapping the fixed image onto the moving grid.
        inverse_invert_flags: for each inverse transform, whether ANTs must invert it (affine files).
        metrics: ``ncc_before`` and ``ncc_after`` (normalised cross-correlation with the fixed
            image over its whole grid, before and after registration; meaningful within one
            modality) and ``seconds`` (registration and warping time).
        workdir: temporary folder holding the transform files until they are saved or cleaned up.
    """

    warped: sitk.Image
    forward_transforms: list[str]
    inverse_transforms: list[str]
    inverse_invert_flags: list[bool]
    metrics: dict[str, float]
    workdir: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def cleanup(self) -> None:
        """Delete the temporary transform files (idempotent)."""
        if self.workdir is not None:
            self.workdir.cleanup()
            self.workdir = None

    def __enter__(self) -> "RegistrationResult":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


WITHIN_SUBJECT_CONFIG = RegistrationConfig(
    transforms=("Rigid",), linear_iterations=(200, 100, 50), linear_shrink_factors=(4, 2, 1),
    linear_smoothing_sigmas=(2, 1, 0),
)


# --- conversions ---------------------------------------------------------------------------------

def sitk_to_ants(image: sitk.Image) -> "ants.ANTsImage":
    """Convert a SimpleITK image to an ANTs image with the same geometry.

    Both libraries use ITK's LPS physical space, so origin, spacing and direction are copied
    unchanged. ANTs images hold unsigned char, unsigned int or float pixels only, and ANTsPy's own
    conversion turns signed integers into unsigned ones (negative Hounsfield units would wrap), so
    pixel types other than uint8, uint16 and uint32 become float32 (exact for int16 data).

    Args:
        image: 2D or 3D scalar or vector image.

    Returns:
        The ANTs image.
    """
    import ants

    vector = image.GetNumberOfComponentsPerPixel() > 1
    pixel = image.GetPixelID()
    exact = (sitk.sitkUInt8, sitk.sitkUInt32, sitk.sitkFloat32, sitk.sitkVectorUInt8, sitk.sitkVectorUInt32,
             sitk.sitkVectorFloat32)
    if pixel in (sitk.sitkUInt16,):
        image = sitk.Cast(image, sitk.sitkUInt32)
    elif pixel == sitk.sitkVectorUInt16:
        image = sitk.Cast(image, sitk.sitkVectorUInt32)
    elif pixel not in exact:
        image = sitk.Cast(image, sitk.sitkVectorFloat32 if vector else sitk.sitkFloat32)
    return ants.from_sitk(image)


def ants_to_sitk(image: "ants.ANTsImage") -> sitk.Image:
    """Convert an ANTs image to a SimpleITK image with the same geometry and pixel values.

    Args:
        image: ANTs image (2D or 3D, scalar or vector).

    Returns:
        The SimpleITK image (pixel type of the ANTs image).
    """
    import ants

    return ants.to_sitk(image)


# --- similarity ----------------------------------------------------------------------------------

def normalized_cross_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Global normalised cross-correlation (Pearson correlation of voxel values).

    Written here because the libraries offer it only as a registration metric bound to a
    transform and an optimiser (ITK) or as a local windowed loss (MONAI).

    Args:
        a: first array.
        b: second array, same shape as ``a``.
        mask: optional boolean array selecting the voxels to compare.

    Returns:
        The correlation in [-1, 1]; NaN when either image is constant over the compared voxels.

    Raises:
        ValueError: if the shapes differ or the mask selects no voxel.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"arrays must have the same shape, got {a.shape} and {b.shape}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != a.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {a.shape}")
        a, b = a[mask], b[mask]
    if a.size == 0:
        raise ValueError("no voxel to compare (empty array or empty mask)")
    # One float64 copy each, centred in place: exact sums on 10^7 voxels without extra copies.
    a = np.array(a, dtype=np.float64).ravel()
    b = np.array(b, dtype=np.float64).ravel()
    a -= a.mean()
    b -= b.mean()
    denominator = np.sqrt(np.dot(a, a) * np.dot(b, b))
    if denominator == 0:
        return float("nan")
    return float(np.dot(a, b) / denominator)


def _resample_onto(image: sitk.Image, reference: sitk.Image, default_value: float = 0.0) -> sitk.Image:
    """``image`` on ``reference``'s grid by physical position only (identity transform)."""
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, default_value, sitk.sitkFloat32)


# --- registration --------------------------------------------------------------------------------

def _levels(values: Sequence[float]) -> str:
    return "x".join(f"{v:g}" for v in values)


def _metric_argument(name: str, fixed: str, moving: str, config: RegistrationConfig, sampled: bool) -> str:
    metric = METRICS[name.upper()]
    parameter = config.cc_radius if metric == "CC" else config.mi_bins
    if not sampled or config.sampling == "None":
        return f"{metric}[{fixed},{moving},1,{parameter}]"
    return f"{metric}[{fixed},{moving},1,{parameter},{config.sampling},{config.sampling_rate:g}]"


def _shrink_and_smoothing(shrink: Sequence[float], sigmas: Sequence[float], config: RegistrationConfig,
                          spacing_mm: float) -> tuple[str, str]:
    """ANTs' ``--shrink-factors`` and ``--smoothing-sigmas`` values for ``config.level_unit``."""
    if config.level_unit == "mm":
        factors = [max(1, int(round(size / spacing_mm))) for size in shrink]
        return _levels(factors), f"{_levels(sigmas)}mm"
    return _levels(shrink), f"{_levels(sigmas)}vox"


def _stage_arguments(stage: str, fixed: str, moving: str, config: RegistrationConfig,
                     spacing_mm: float = 1.0) -> list[str]:
    if stage in LINEAR_TRANSFORMS:
        transform = f"{stage}[{config.linear_gradient_step:g}]"
        metric = _metric_argument(config.metric, fixed, moving, config, sampled=True)
        iterations, shrink, sigmas = config.linear_iterations, config.linear_shrink_factors, config.linear_smoothing_sigmas
    else:
        transform = f"SyN[{config.syn_gradient_step:g},{config.syn_update_sigma:g},{config.syn_total_sigma:g}]"
        # Dense metric evaluation: the SyN gradient is a per-voxel field.
        metric = _metric_argument(config.syn_metric or config.metric, fixed, moving, config, sampled=False)
        iterations, shrink, sigmas = config.syn_iterations, config.syn_shrink_factors, config.syn_smoothing_sigmas
    shrink_argument, sigmas_argument = _shrink_and_smoothing(shrink, sigmas, config, spacing_mm)
    return [
        "--transform", transform,
        "--metric", metric,
        "--convergence", f"[{_levels(iterations)},{config.convergence_threshold:g},{config.convergence_window}]",
        "--shrink-factors", shrink_argument,
        "--smoothing-sigmas", sigmas_argument,
    ]


def _run_stages(fixed: "ants.ANTsImage", moving: "ants.ANTsImage", prefix: str, config: RegistrationConfig,
                fixed_mask: "ants.ANTsImage | None", moving_mask: "ants.ANTsImage | None") -> None:
    import ants
    # ANTsPy passes in-memory images to antsRegistration as pointer strings; its simplified
    # interface cannot express per-stage shrink factors for SyN, so the full interface is used.
    from ants.internal import get_pointer_string

    fixed_ptr, moving_ptr = get_pointer_string(fixed), get_pointer_string(moving)
    if config.initialization == "identity":
        initial = "Identity"
    else:
        initial = f"[{fixed_ptr},{moving_ptr},{INITIALIZATIONS[config.initialization]}]"
    args: list[str] = ["--dimensionality", str(fixed.dimension), "--initial-moving-transform", initial]
    for stage in config.transforms:
        args += _stage_arguments(stage, fixed_ptr, moving_ptr, config, spacing_mm=float(min(fixed.spacing)))
    if fixed_mask is not None or moving_mask is not None:
        fixed_mask_ptr = get_pointer_string(fixed_mask) if fixed_mask is not None else "NA"
        moving_mask_ptr = get_pointer_string(moving_mask) if moving_mask is not None else "NA"
        args += ["--masks", f"[{fixed_mask_ptr},{moving_mask_ptr}]"]
    if config.winsorize is not None:
        args += ["--winsorize-image-intensities", f"[{config.winsorize[0]:g},{config.winsorize[1]:g}]"]
    if config.random_seed is not None:
        args += ["--random-seed", str(int(config.random_seed))]
    args += [
        "--use-histogram-matching", str(int(config.histogram_matching)),
        "--collapse-output-transforms", "1",
        "--float", str(int(config.float_precision)),
        "--output", prefix,
        "--verbose", "0",
    ]
    status = ants.registration(args, None)
    if status != 0:  # pragma: no cover - ANTsPy raises on failure itself
        raise RuntimeError(f"antsRegistration failed with status {status}")


def _to_registration_image(image: sitk.Image, role: str) -> "ants.ANTsImage":
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() not in (2, 3):
        raise ValueError(f"{role} image must be a 2D or 3D scalar image")
    array = sitk.GetArrayViewFromImage(image)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{role} image contains NaN or infinite values")
    return sitk_to_ants(sitk.Cast(image, sitk.sitkFloat32))


def _mask_to_ants(mask: sitk.Image | None) -> "ants.ANTsImage | None":
    if mask is None:
        return None
    return sitk_to_ants(sitk.Cast(mask != 0, sitk.sitkUInt8))


def register(moving: sitk.Image, fixed: sitk.Image, config: RegistrationConfig | None = None, *,
             fixed_mask: sitk.Image | None = None, moving_mask: sitk.Image | None = None) -> RegistrationResult:
    """Register ``moving`` onto ``fixed``.

    Args:
        moving: image to align.
        fixed: reference image; its grid is the grid of the warped output.
        config: registration parameters; defaults to :class:`RegistrationConfig` ().
        fixed_mask: optional mask (non-zero = used) restricting the metric in the fixed image.
        moving_mask: optional mask restricting the metric in the moving image.

    Returns:
        The :class:`RegistrationResult`; its transform files live in a temporary folder until
        :func:`save_transforms` or ``cleanup()``.

    Raises:
        ValueError: if an image is not scalar 2D/3D, holds NaN/inf, or the dimensions differ.
        RuntimeError: if ANTs fails.
    """
    import ants

    config = config or RegistrationConfig()
    if moving.GetDimension() != fixed.GetDimension():
        raise ValueError(f"moving image is {moving.GetDimension()}D but fixed image is {fixed.GetDimension()}D")
    start = time.perf_counter()
    fixed_ants = _to_registration_image(fixed, "fixed")
    moving_ants = _to_registration_image(moving, "moving")
    workdir = tempfile.TemporaryDirectory(prefix="registration-")
    prefix = os.path.join(workdir.name, "")
    try:
        if isinstance(config.transforms, str):
            output = ants.registration(
                fixed_ants, moving_ants, type_of_transform=config.transforms, outprefix=prefix,
                mask=_mask_to_ants(fixed_mask), moving_mask=_mask_to_ants(moving_mask),
                singleprecision=config.float_precision,
            )
            forward = list(output["fwdtransforms"])
            inverse = list(output["invtransforms"])
        else:
            _run_stages(fixed_ants, moving_ants, prefix, config, _mask_to_ants(fixed_mask), _mask_to_ants(moving_mask))
            forward, inverse = _collapsed_transform_lists(prefix)
        inverse_flags = [path.endswith(".mat") for path in inverse]
        warped = apply_transforms(moving, fixed, forward, "linear", default_value=config.default_value)
        seconds = time.perf_counter() - start
        # Array views do not keep their image alive: hold every image in a name while viewed.
        unregistered = _resample_onto(moving, fixed, config.default_value)
        fixed_array = sitk.GetArrayViewFromImage(fixed)
        metrics = {
            "ncc_before": normalized_cross_correlation(fixed_array, sitk.GetArrayViewFromImage(unregistered)),
            "ncc_after": normalized_cross_correlation(fixed_array, sitk.GetArrayViewFromImage(warped)),
            "seconds": seconds,
        }
    except BaseException:
        workdir.cleanup()
        raise
    return RegistrationResult(warped, forward, inverse, inverse_flags, metrics, workdir)


def _collapsed_transform_lists(prefix: str) -> tuple[list[str], list[str]]:
    """Transform lists of an ``antsRegistration`` run with ``--collapse-output-transforms 1``."""
    affine = f"{prefix}0GenericAffine.mat"
    warp, inverse_warp = f"{prefix}1Warp.nii.gz", f"{prefix}1InverseWarp.nii.gz"
    if os.path.exists(warp):
        return [warp, affine], [affine, inverse_warp]
    # A deformable-only run has no affine file and numbers its warp 0.
    warp0, inverse_warp0 = f"{prefix}0Warp.nii.gz", f"{prefix}0InverseWarp.nii.gz"
    if os.path.exists(warp0):
        return [warp0], [inverse_warp0]
    return [affine], [affine]


def register_within_subject(moving: sitk.Image, fixed: sitk.Image, config: RegistrationConfig | None = None) -> RegistrationResult:
    """Rigidly register one subject's image to another of the same subject (e.g. T2 onto T1).

    Only the linear part of ``config`` is used; mutual information handles the contrast change.
    The default (:data:`WITHIN_SUBJECT_CONFIG`) ends at full resolution: with no deformable stage
    after it, the rigid stage alone sets the accuracy.

    Args:
        moving: image to align (e.g. T2).
        fixed: image of the same subject defining the grid (e.g. T1).
        config: parameters; its ``transforms`` are replaced by ``("Rigid",)``.

    Returns:
        The :class:`RegistrationResult`.
    """
    config = (config or WITHIN_SUBJECT_CONFIG).replace(transforms=("Rigid",))
    return register(moving, fixed, config)


# --- transforms ----------------------------------------------------------------------------------

def apply_transforms(image: sitk.Image, reference: sitk.Image, transform_files: Sequence[str | os.PathLike],
                     interpolator: str = "linear", invert_flags: Sequence[bool] | None = None,
                     default_value: float = 0.0) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid through ANTs transform files.

    Args:
        image: image to resample.
        reference: image defining the output grid.
        transform_files: transform files in ANTs order (e.g. ``result.forward_transforms``).
        interpolator: ``"linear"`` (or another ANTs image interpolator) for images;
            ``"nearestNeighbor"`` or ``"genericLabel"`` for masks and label maps.
        invert_flags: per file, whether to invert it (``result.inverse_invert_flags``).
        default_value: value of output voxels that map outside ``image``.

    Returns:
        The resampled image: float32 for image interpolators, the input pixel type for label
        interpolators.

    Raises:
        ValueError: for an unknown interpolator or a mismatched ``invert_flags`` length.
        PreprocessingError: if a transform file does not exist.
    """
    import ants

    if interpolator not in IMAGE_INTERPOLATORS + LABEL_INTERPOLATORS:
        raise ValueError(f"interpolator must be one of {IMAGE_INTERPOLATORS + LABEL_INTERPOLATORS}, got {interpolator!r}")
    files = [os.fspath(path) for path in transform_files]
    for path in files:
        if not os.path.isfile(path):
            raise PreprocessingError(path, "transform file does not exist")
    if invert_flags is not None and len(invert_flags) != len(files):
        raise ValueError(f"invert_flags has {len(invert_flags)} entries for {len(files)} transform files")
    warped = ants.apply_transforms(
        fixed=sitk_to_ants(reference), moving=sitk_to_ants(image), transformlist=files,
        interpolator=interpolator, whichtoinvert=None if invert_flags is None else [bool(f) for f in invert_flags],
        defaultvalue=default_value, singleprecision=True,
    )
    output = ants_to_sitk(warped)
    if interpolator in LABEL_INTERPOLATORS:
        output = sitk.Cast(output, image.GetPixelID())
    elif output.GetPixelID() != sitk.sitkFloat32:
        output = sitk.Cast(output, sitk.sitkFloat32)
    return output


def save_transforms(result: RegistrationResult, folder: str | os.PathLike, prefix: str = "to_reference_") -> RegistrationResult:
    """Copy a result's transform files into ``folder`` under stable names and delete the temporary ones.

    Files are named as ANTs names them, after ``prefix``: ``<prefix>0GenericAffine.mat``,
    ``<prefix>1Warp.nii.gz``, ``<prefix>1InverseWarp.nii.gz``; ``<prefix>transforms.json`` lists
    the forward and inverse transforms (relative names), the inversion flags and the metrics.

    Args:
        result: a result of :func:`register` whose temporary files still exist.
        folder: destination folder (created if needed).
        prefix: file name prefix.

    Returns:
        A copy of ``result`` whose transform lists point to the saved files.

    Raises:
        PreprocessingError: if a transform file of ``result`` no longer exists.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    saved: dict[str, str] = {}
    try:
        for source in dict.fromkeys(result.forward_transforms + result.inverse_transforms):
            if not os.path.isfile(source):
                raise PreprocessingError(source, "transform file no longer exists (already cleaned up?)")
            name = Path(source).name
            if result.workdir is not None and Path(source).parent == Path(result.workdir.name):
                name = prefix + name
            destination = folder / name
            with atomic_path(destination) as tmp:
                shutil.copyfile(source, tmp)
            saved[source] = str(destination)
    finally:
        result.cleanup()
    forward = [saved[path] for path in result.forward_transforms]
    inverse = [saved[path] for path in result.inverse_transforms]
    atomic_write_json(folder / f"{prefix}{TRANSFORMS_MANIFEST}", {
        "forward_transforms": [Path(p).name for p in forward],
        "inverse_transforms": [Path(p).name for p in inverse],
        "inverse_invert_flags": list(result.inverse_invert_flags),
        "metrics": result.metrics,
    })
    return dataclasses.replace(result, forward_transforms=forward, inverse_transforms=inverse, workdir=None)


def map_fixed_points_to_moving(points_lps: np.ndarray, result: RegistrationResult) -> np.ndarray:
    """Map physical points (LPS mm) of the fixed image to the corresponding points of the moving image.

    Used to measure registration error against landmarks known in both images: the error of a
    landmark is the distance between its mapped fixed position and its true moving position.

    Args:
        points_lps: array (n, dim) of fixed-space points.
        result: a registration result whose transform files exist.

    Returns:
        Array (n, dim) of moving-space points.
    """
    import ants
    import pandas as pd

    points = np.atleast_2d(np.asarray(points_lps, dtype=np.float64))
    columns = "xyz"[: points.shape[1]]
    frame = pd.DataFrame(points, columns=list(columns))
    # ANTs maps points in the direction opposite to images: the forward (image) transforms
    # take fixed points to moving points.
    mapped = ants.apply_transforms_to_points(points.shape[1], frame, list(result.forward_transforms),
                                             whichtoinvert=[False] * len(result.forward_transforms))
    return mapped[list(columns)].to_numpy(dtype=np.float64)


# --- reference selection -------------------------------------------------------------------------

def downsampled(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``image`` smoothed and resampled to ``spacing_mm`` voxels (float32); unchanged if already as coarse.

    The copies :func:`rigid_similarity` compares; computing them once per volume (as the cohort
    runner does) and passing them in saves the smoothing of full-size volumes for every pair.

    Args:
        image: a 2D or 3D image.
        spacing_mm: voxel side of the copy.

    Returns:
        The downsampled copy, same origin and direction.
    """
    image = sitk.Cast(image, sitk.sitkFloat32)
    factors = [spacing_mm / s for s in image.GetSpacing()]
    if max(factors) <= 1:
        return image
    # Anti-alias before resampling: sigma of half the new voxel size.
    smoothed = sitk.SmoothingRecursiveGaussian(image, [max(spacing_mm / 2, s / 2) for s in image.GetSpacing()])
    size = [max(1, int(round(n * s / spacing_mm))) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(smoothed, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                         [spacing_mm] * image.GetDimension(), image.GetDirection(), 0.0, sitk.sitkFloat32)


def reference_comparisons(names: Sequence[str], max_comparisons: int) -> list[tuple[str, str]]:
    """The pairs of candidates :func:`choose_reference` compares, each once, in a fixed order.

    Each candidate is compared with at most ``max_comparisons`` others, spread evenly over the
    sorted names, so the number of pairs grows linearly with the cohort.

    Args:
        names: candidate names.
        max_comparisons: most other candidates each one is compared with.

    Returns:
        Sorted ``(a, b)`` name pairs with ``a < b``.
    """
    names = sorted(names)
    pairs: dict[tuple[str, str], None] = {}  # insertion-ordered set: linear in the cohort size
    for name in names:
        others = [n for n in names if n != name]
        step = max(1, len(others) // max(1, max_comparisons))
        for other in others[::step][:max_comparisons]:
            pairs[(min(name, other), max(name, other))] = None
    return list(pairs)


def rigid_similarity(first: sitk.Image, second: sitk.Image, config: RegistrationConfig | None = None) -> float:
    """NCC of two volumes after a quick rigid alignment on copies downsampled to ``config.reference_spacing_mm``.

    Volumes already that coarse (:func:`downsampled` copies) are used as they are.

    Args:
        first: fixed volume.
        second: moving volume.
        config: registration parameters (``reference_spacing_mm``, ``metric``, ``random_seed``...).

    Returns:
        The normalised cross-correlation after alignment.
    """
    config = config or RegistrationConfig()
    quick = config.replace(
        transforms=("Rigid",), linear_iterations=(200, 100), linear_shrink_factors=(2, 1),
        linear_smoothing_sigmas=(1, 0), sampling="None", winsorize=(0.005, 0.995), level_unit="voxels",
    )
    fixed = downsampled(first, config.reference_spacing_mm)
    moving = downsampled(second, config.reference_spacing_mm)
    with register(moving, fixed, quick) as result:
        return float(result.metrics["ncc_after"])


def most_similar(names: Sequence[str], similarity: Mapping[tuple[str, str], float]) -> str:
    """The candidate with the highest mean similarity to the others it was compared with.

    Args:
        names: candidate names.
        similarity: NCC per compared pair (as returned by :func:`reference_comparisons`).

    Returns:
        The winner; ties go to the first name in sorted order.
    """
    names = sorted(names)
    scores = {name: float(np.mean([v for pair, v in similarity.items() if name in pair] or [-np.inf]))
              for name in names}
    return max(names, key=lambda name: (scores[name], -names.index(name)))


def choose_reference(images: Mapping[str, sitk.Image], config: RegistrationConfig | None = None) -> str:
    """Choose the reference of a set of volumes of one modality.

    With ``config.reference`` set, returns it: a key of ``images``, or the path of an image file.
    Otherwise returns the volume most similar to the others after rigid alignment: every volume is
    downsampled to ``config.reference_spacing_mm``, each pair of :func:`reference_comparisons` is
    aligned by a quick rigid registration (:func:`rigid_similarity`), and the candidate with the
    highest mean NCC to the others wins (:func:`most_similar`). The cohort runner runs the same
    comparisons in parallel.

    Args:
        images: candidate volumes by name.
        config: registration parameters (``reference``, ``reference_spacing_mm``,
            ``reference_max_comparisons``, ``random_seed``, ``metric`` are used).

    Returns:
        The chosen name, or the configured reference path.

    Raises:
        ValueError: if ``images`` is empty and no reference is configured.
        PreprocessingError: if the configured reference is neither a key nor an existing file.
    """
    config = config or RegistrationConfig()
    if config.reference is not None:
        if config.reference in images:
            return config.reference
        if os.path.isfile(config.reference):
            return config.reference
        raise PreprocessingError(config.reference, "configured reference is neither a volume name nor an existing file")
    if not images:
        raise ValueError("no image to choose a reference from")
    names = sorted(images)
    if len(names) == 1:
        return names[0]
    similarity = {pair: rigid_similarity(images[pair[0]], images[pair[1]], config)
                  for pair in reference_comparisons(names, config.reference_max_comparisons)}
    return most_similar(names, similarity)
