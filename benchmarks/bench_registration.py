"""Benchmark of the default registration (rigid then SyN) on full-size head volumes.

Builds two synthetic 256x256x150 1 mm head-like MR volumes (a textured phantom and a copy moved
by a known rigid offset and a mild smooth warp, each with its own noise) or, with ``--demo DIR``,
takes the first two full-size T1 volumes of a demo cohort; registers the second onto the first
and records wall time and NCC (whole volume and inside the head) in the ``--output`` JSON file.

    python benchmarks/bench_registration.py --output bench_registration.json [--threads 2 1]
        [--demo DIR] [--compare-quick] [--steps]

The thread count must be fixed before ANTs starts, so each configuration runs in its own
process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from medgan_common.atomic import atomic_write_json  # noqa: E402

SHAPE_ZYX = (150, 256, 256)


def head_phantom(shape_zyx: tuple[int, int, int] = SHAPE_ZYX, seed: int = 0) -> np.ndarray:
    """A T1-like head at 1 mm: scalp, dark skull, CSF, folded grey/white matter, ventricles."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) - (n - 1) / 2 for n in shape_zyx), indexing="ij")
    radius = np.sqrt((x / 75) ** 2 + (y / 95) ** 2 + (z / 65) ** 2)
    # Folding pattern: smoothed noise at a gyral scale, computed at half resolution for speed.
    small = ndimage.gaussian_filter(rng.normal(size=[n // 2 for n in shape_zyx]).astype(np.float32), 1.3)
    folds = ndimage.zoom(small / small.std(), 2, order=1)[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]
    ventricles = (((x - 8) / 7) ** 2 + (y / 25) ** 2 + (z / 12) ** 2 < 1) | (((x + 8) / 7) ** 2 + (y / 25) ** 2 + (z / 12) ** 2 < 1)
    image = np.zeros(shape_zyx, np.float32)
    image[radius < 1.0] = 70  # scalp
    image[radius < 0.93] = 20  # skull
    image[radius < 0.87] = 35  # CSF
    brain = radius < 0.84
    image[brain] = np.where(folds[brain] > 0.2 + 2.0 * (radius[brain] - 0.6), 75, 110)  # grey / white
    image[ventricles] = 30
    return ndimage.gaussian_filter(image, 0.8)


def moved_copy(fixed: sitk.Image, seed: int = 1) -> sitk.Image:
    """``fixed`` moved by a rigid offset (about 5 degrees, 8 mm) and a smooth warp (about 3 mm)."""
    rng = np.random.default_rng(seed)
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()])
    rigid = sitk.Euler3DTransform(centre, 0.06, -0.05, 0.08, (5.0, -4.0, 4.5))
    warp = sitk.BSplineTransformInitializer(fixed, [5, 5, 5])
    warp.SetParameters(rng.normal(scale=1.5, size=len(warp.GetParameters())).tolist())
    return sitk.Resample(fixed, fixed, sitk.CompositeTransform([rigid, warp]), sitk.sitkLinear, 0.0)


def synthetic_pair(seed: int = 0) -> tuple[sitk.Image, sitk.Image]:
    clean = sitk.GetImageFromArray(head_phantom(seed=seed))
    clean.SetOrigin([-(n - 1) / 2 for n in clean.GetSize()])
    moving = moved_copy(clean, seed + 1)
    rng = np.random.default_rng(seed + 2)

    def noisy(image: sitk.Image) -> sitk.Image:
        array = sitk.GetArrayFromImage(image)
        noisy_image = sitk.GetImageFromArray(np.abs(array + rng.normal(scale=3.0, size=array.shape)).astype(np.float32))
        noisy_image.CopyInformation(image)
        return noisy_image

    return noisy(clean), noisy(moving)


def demo_pair(demo: Path) -> tuple[sitk.Image, sitk.Image]:
    files = sorted((demo / "raw" / "mri").glob("*-T1.nii.gz"))
    if len(files) < 2:
        raise SystemExit(f"{demo}: need at least two raw/mri/*-T1.nii.gz files")
    fixed, moving = (sitk.DICOMOrient(sitk.Cast(sitk.ReadImage(str(f)), sitk.sitkFloat32), "LPS") for f in files[:2])
    return fixed, moving


def cpu_seconds() -> float:
    """CPU time of this process and its threads: less sensitive than wall time to other load."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one(pair_dir: Path, transforms: str | None, threads: int) -> dict:
    """Register the saved pair in this process (thread count already set) and return the figures."""
    from preprocessing.registration import RegistrationConfig, normalized_cross_correlation, register

    fixed = sitk.ReadImage(str(pair_dir / "fixed.nii"))
    moving = sitk.ReadImage(str(pair_dir / "moving.nii"))
    config = RegistrationConfig() if transforms is None else RegistrationConfig(transforms=transforms)
    start, start_cpu = time.perf_counter(), cpu_seconds()
    with register(moving, fixed, config) as result:
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
        fixed_array = sitk.GetArrayFromImage(fixed)
        head = sitk.GetArrayFromImage(sitk.OtsuThreshold(fixed, 0, 1)) > 0
        moving_on_fixed = sitk.GetArrayFromImage(sitk.Resample(moving, fixed))
        return {
            "transforms": config.transforms,
            "threads": threads,
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "ncc_before": round(result.metrics["ncc_before"], 4),
            "ncc_after": round(result.metrics["ncc_after"], 4),
            "ncc_head_before": round(normalized_cross_correlation(fixed_array, moving_on_fixed, head), 4),
            "ncc_head_after": round(normalized_cross_correlation(fixed_array, sitk.GetArrayFromImage(result.warped), head), 4),
        }


def time_other_steps(pair_dir: Path) -> dict:
    """Seconds of the per-volume steps other than registration, at 256x256x150 (best of 3).

    Run as a cohort worker runs them: one thread (the default of 2 workers on 2 cores) and freed
    memory kept for reuse. ``ct_artefact_mask_step`` is the cohort runner's whole CT artefact mask
    step: the mask built on the CT as read and applied, carried through the CT's rigid + SyN
    transforms onto the registered grid and applied there, both volumes written.
    """
    import importlib.util

    from medgan_common.host_memory import retain_freed_host_memory
    from preprocessing.artefact_mask import apply_artefact_mask, build_artefact_mask
    from preprocessing.mask_warp import carry_mask_array
    from preprocessing.normalization import head_mask_ct, head_mask_mr, percentile_normalize, zscore_normalize
    from preprocessing.runner.common import like, write_image
    from preprocessing.runner.imaging import apply_mask, build_mask, carried_mask
    from preprocessing.registration import (RegistrationConfig, ants_to_sitk, apply_transforms,
                                            normalized_cross_correlation, register, save_transforms,
                                            sitk_to_ants)
    from preprocessing.slices import extract_slices, save_slices
    from preprocessing.windowing import hu_to_window, hu_to_windows

    retain_freed_host_memory()
    # The CT phantom of the artefact-mask tests, at full size: one definition of the phantom.
    spec = importlib.util.spec_from_file_location(
        "artefact_phantom", REPOSITORY / "tests" / "preprocessing" / "test_artefact_mask.py")
    phantom = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(phantom)
    ct, _, _ = phantom.ct_phantom(shape=SHAPE_ZYX)
    fixed = sitk.ReadImage(str(pair_dir / "fixed.nii"))
    moving = sitk.ReadImage(str(pair_dir / "moving.nii"))
    ct_image = sitk.GetImageFromArray(ct.astype(np.float32))
    ct_image.CopyInformation(moving)  # the CT as read, on the moving volume's grid
    quick = RegistrationConfig(transforms=("Rigid",), linear_iterations=(20,), linear_shrink_factors=(8,),
                               linear_smoothing_sigmas=(3,))
    with tempfile.TemporaryDirectory() as folder:
        saved = save_transforms(register(moving, fixed, quick), folder)
        syn = save_transforms(register(moving, fixed, RegistrationConfig()), os.path.join(folder, "syn"))
        mask = build_artefact_mask(ct)[0]
        mask_image = like(mask.astype(np.uint8), ct_image)

        def ct_artefact_mask_step() -> None:
            native, _ = build_mask(ct_image, {})
            apply_mask(ct_image, native, -1000.0)
            registered = carried_mask(native, fixed, syn.forward_transforms)
            masked = apply_mask(fixed, registered, -1000.0)
            write_image(registered, Path(folder) / "ct_mask.nii.gz")
            write_image(masked, Path(folder) / "ct_hu.nii.gz")

        def carry_mask_ants() -> None:
            fraction = apply_transforms(sitk.Cast(mask_image, sitk.sitkFloat32), fixed, syn.forward_transforms)
            sitk.Cast(fraction >= 0.5, sitk.sitkUInt8)

        mr = sitk.GetArrayFromImage(fixed)
        mr_mask = head_mask_mr(mr)
        axial = extract_slices(fixed, "axial", intensity_range=(float(mr.min()), float(mr.max())))

        steps = {
            "build_artefact_mask": lambda: build_artefact_mask(ct),
            "apply_artefact_mask": lambda: apply_artefact_mask(ct, mask),
            "carry_mask_syn": lambda: carry_mask_array(mask, ct_image, fixed, syn.forward_transforms),
            "carry_mask_syn_ants": carry_mask_ants,
            "ct_artefact_mask_step": ct_artefact_mask_step,
            "head_mask_mr_otsu": lambda: head_mask_mr(sitk.GetArrayViewFromImage(fixed)),
            "head_mask_mr_noise": lambda: head_mask_mr(sitk.GetArrayViewFromImage(fixed), method="noise"),
            "sitk_to_ants_and_back": lambda: ants_to_sitk(sitk_to_ants(moving)),
            "normalized_cross_correlation": lambda: normalized_cross_correlation(
                sitk.GetArrayViewFromImage(fixed), sitk.GetArrayViewFromImage(moving)),
            "apply_transforms_affine": lambda: apply_transforms(moving, fixed, saved.forward_transforms),
            "head_mask_ct": lambda: head_mask_ct(ct),
            "zscore_normalize": lambda: zscore_normalize(mr, mr_mask),
            "percentile_normalize": lambda: percentile_normalize(mr, mr_mask),
            "hu_to_window_brain": lambda: hu_to_window(ct, "brain"),
            "hu_to_windows_3_stack": lambda: hu_to_windows(ct, ("brain", "subdural", "bone")),
            "extract_slices_axial_all": lambda: extract_slices(fixed, "axial", intensity_range=(float(mr.min()), float(mr.max()))),
            "extract_slices_sagittal_2_5d": lambda: extract_slices(fixed, "sagittal", neighbours=1),
            "save_slices_axial_all": lambda: save_slices(*axial, Path(folder) / "slices", "bench"),
        }
        timings = {}
        for name, step in steps.items():
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                step()
                best = min(best, time.perf_counter() - start)
            timings[name] = round(best, 3)
    return timings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="JSON file receiving the results")
    parser.add_argument("--demo", type=Path, help="demo cohort folder (uses its first two full-size T1 volumes)")
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="ITK thread counts to time")
    parser.add_argument("--compare-quick", action="store_true", help="also time ANTsPy's antsRegistrationSyNQuick[s]")
    parser.add_argument("--steps", action="store_true", help="also time the other per-volume steps (artefact mask...)")
    parser.add_argument("--worker", nargs=3, metavar=("PAIR_DIR", "TRANSFORMS", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        pair_dir, transforms, threads = args.worker
        if transforms == "steps":
            print(json.dumps(time_other_steps(Path(pair_dir))))
        else:
            print(json.dumps(run_one(Path(pair_dir), None if transforms == "default" else transforms, int(threads))))
        return

    with tempfile.TemporaryDirectory(prefix="bench-registration-") as workdir:
        fixed, moving = demo_pair(args.demo) if args.demo else synthetic_pair()
        # Uncompressed NIfTI: the worker processes read it back in a fraction of a second.
        sitk.WriteImage(fixed, os.path.join(workdir, "fixed.nii"))
        sitk.WriteImage(moving, os.path.join(workdir, "moving.nii"))
        runs = [("default", threads) for threads in args.threads]
        if args.compare_quick:
            runs.append(("antsRegistrationSyNQuick[s]", max(args.threads)))
        if args.steps:
            runs.append(("steps", 1))  # as a cohort worker on 2 cores runs them
        results, steps = [], None
        for transforms, threads in runs:
            environment = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads))
            completed = subprocess.run(
                [sys.executable, __file__, "--output", os.devnull, "--worker", workdir, transforms, str(threads)],
                env=environment, check=True, capture_output=True, text=True,
            )
            figures = json.loads(completed.stdout.strip().splitlines()[-1])
            print(json.dumps(figures), flush=True)
            if transforms == "steps":
                steps = figures
            else:
                results.append(figures)
    report = {
        "data": f"demo T1 {args.demo}" if args.demo else "synthetic head phantom 256x256x150 1 mm, rigid offset + smooth warp",
        "size_xyz": list(fixed.GetSize()),
        "cpu_count": os.cpu_count(),
        "results": results,
    }
    if steps is not None:
        report["other_steps_seconds"] = steps
    atomic_write_json(args.output, report)


if __name__ == "__main__":
    main()
