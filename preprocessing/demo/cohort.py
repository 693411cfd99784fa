"""Build the demo cohort: raw data as hospitals deliver it, plus the paired truth behind it.

One subject = one head in a common truth space, rendered in CT, T1 and T2, then placed in each
scanner with its own pose (:mod:`.pose`), acquisition effects (:mod:`.appearance`) and, for CT, the
head holder (:mod:`.head_holder`). Two anatomies:

- ``mni152`` (default): the brain of the MNI152 ICBM 2009a template, deformed per subject, in a
  skull and scalp built around it (:mod:`.template_anatomy`), imaged by tissue physics: MR signal
  from relaxation times and sequence equations, CT from HU, mixed by volume fraction
  (:mod:`.tissue_physics`);
- ``procedural``: a phantom of ellipsoidal shells and a random folded cortex (:mod:`.anatomy`),
  painted with one value per tissue label; needs no template.
 Everything is drawn from a seeded
generator per subject, so a seed gives byte-identical files whatever the number of workers.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medgan_common.atomic import atomic_write_json, atomic_write_with
from preprocessing.demo import anatomy, appearance, template_anatomy, tissue_physics
from preprocessing.demo.dicom_export import StudyIdentity, write_axial_series, write_localizer
from preprocessing.demo.grid import Grid
from preprocessing.demo.head_holder import add_head_holder
from preprocessing.demo.pose import Pose, render_in_raw

SIZES = ("small", "full")
ANATOMIES = ("mni152", "procedural")


@dataclass(frozen=True)
class CohortGeometry:
    """Grids of one cohort size.

    Args:
        truth: the common truth grid.
        supersample: the anatomy is rendered this many times finer per axis, then block-averaged
            (partial volume of coarse voxels).
        t1: sagittal-acquired T1 grid (IXI-like).
        t2: axial T2 grid (IXI-like).
        ct: thin axial CT grid.
        thick_factor: thin slices averaged into one slice of the thick series.
        ct_noise_hu: CT noise standard deviation.
    """

    truth: Grid
    supersample: int
    t1: Grid
    t2: Grid
    ct: Grid
    thick_factor: int
    ct_noise_hu: float


# IXI T1 is acquired sagittally (axes run posterior, inferior, left), IXI T2 axially; their NIfTI
# orientations differ, as they do in the real data set.
_SAGITTAL = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
_AXIAL_RADIOLOGICAL = np.diag([-1.0, -1.0, 1.0])


def cohort_geometry(size: str) -> CohortGeometry:
    """Grids for ``small`` (about 64³, for tests) or ``full`` (about 1 mm, IXI/CQ500-like).

    Args:
        size: ``"small"`` or ``"full"``.

    Returns:
        The geometry.
    """
    if size == "small":
        return CohortGeometry(
            truth=Grid.centred((64, 64, 64), (3.5, 3.5, 3.5)),
            supersample=3,
            t1=Grid.centred((64, 64, 40), (3.75, 3.75, 4.5), _SAGITTAL, (0.0, 0.0, 5.0)),
            t2=Grid.centred((64, 64, 34), (3.75, 3.75, 4.6), _AXIAL_RADIOLOGICAL, (0.0, 0.0, 20.0)),
            ct=Grid.centred((64, 64, 40), (4.0, 4.0, 5.0), None, (0.0, 15.0, 5.0)),
            thick_factor=2,
            ct_noise_hu=3.0,
        )
    if size == "full":
        return CohortGeometry(
            truth=Grid.centred((184, 224, 200), (1.0, 1.0, 1.0)),
            supersample=1,
            t1=Grid.centred((256, 256, 150), (0.9375, 0.9375, 1.2), _SAGITTAL, (0.0, 0.0, 5.0)),
            t2=Grid.centred((256, 256, 130), (0.9375, 0.9375, 1.2), _AXIAL_RADIOLOGICAL, (0.0, 0.0, 20.0)),
            ct=Grid.centred((512, 512, 144), (0.5, 0.5, 1.25), None, (0.0, 15.0, 12.0)),
            thick_factor=4,
            ct_noise_hu=6.0,
        )
    raise ValueError(f"unknown cohort size {size!r}; choose one of {', '.join(SIZES)}")


def supersampled_grid(geometry: CohortGeometry) -> Grid:
    """The grid the anatomy is rendered on: the truth grid ``supersample`` times finer, same extent."""
    f, truth = geometry.supersample, geometry.truth
    return Grid(tuple(s * f for s in truth.shape), tuple(s / f for s in truth.spacing), truth.direction,
                truth.origin - (f - 1) / (2 * f) * np.asarray(truth.spacing))


def subject_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of one subject: its data depend on the cohort seed and its index only."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def subject_name(index: int) -> str:
    """Subject ID of the ``index``-th demo subject (0-based): ``demo001``, ``demo002``…"""
    return f"demo{index + 1:03d}"


def has_localizer(index: int) -> bool:
    """Every second study has a scout series, as in PACS exports where some studies keep it."""
    return index % 2 == 1


def has_thick_series(index: int) -> bool:
    """Every third study also has a 5 mm-class reconstruction, so that series selection has a real choice."""
    return index % 3 == 2


def _save_nifti(path: Path, array: np.ndarray, grid: Grid) -> None:
    image = nib.Nifti1Image(array, grid.affine_ras)
    image.header.set_xyzt_units("mm")
    image.set_qform(grid.affine_ras, code=1)
    image.set_sform(grid.affine_ras, code=1)
    atomic_write_with(path, lambda tmp: nib.save(image, tmp))


def check_anatomy(anatomy_name: str) -> None:
    """Refuse an unknown anatomy, or the template anatomy when its files are not installed.

    Raises:
        ValueError: unknown name.
        preprocessing.demo.template.TemplateMissingError: nilearn or its template files are missing.
    """
    if anatomy_name not in ANATOMIES:
        raise ValueError(f"unknown anatomy {anatomy_name!r}; choose one of {', '.join(ANATOMIES)}")
    if anatomy_name == "mni152":
        from preprocessing.demo.template import template_folder

        template_folder()


def _render_truth(fine: Grid, factor: int, anatomy_name: str, rng: np.random.Generator):
    """One subject's anatomy on the supersampled grid, imaged and averaged down to the truth grid.

    Returns:
        ``(labels, images, values, anatomy_record)``: the truth label map, ``{modality: image}``,
        the subject's value per tissue and modality, and what the manifest records of the anatomy.
    """
    # Drawn in the order anatomy, texture, values, so that a seed's procedural heads stay as they were.
    if anatomy_name == "mni152":
        params = template_anatomy.TemplateHeadParameters.random(rng)
        tissues = template_anatomy.build_tissue_fractions(fine, params, rng)
        labels = tissues.dominant_labels(factor)
        texture = appearance.tissue_texture(fine.shape, fine.spacing, rng)
        values = tissue_physics.subject_tissue_values(rng)
        plain = {m: tissues.render(values[m]) for m in appearance.MODALITIES}
        # Texture where tissue dominates, as the procedural head has it outside its air label.
        tissue = tissues.fractions[anatomy.AIR] < 0.5
        del tissues
        record = {"anatomy": "mni152", "scale": [round(s, 4) for s in params.scale],
                  "warp_mm": round(params.warp_mm, 3), "ventricle_scale": round(params.ventricle_scale, 4)}
    else:
        params = anatomy.HeadParameters.random(rng)
        fine_labels = anatomy.build_labels(fine, params, rng)
        texture = appearance.tissue_texture(fine.shape, fine.spacing, rng)
        values = appearance.subject_tissue_values(rng)
        plain = {m: appearance.render_tissues(fine_labels, values[m]) for m in appearance.MODALITIES}
        record = {"anatomy": "procedural", "semi_axes_mm": [round(a, 3) for a in params.semi_axes],
                  "ventricle_scale": round(params.ventricle_scale, 4)}
        labels = anatomy.block_mode_centre(fine_labels, factor)
        tissue = fine_labels != anatomy.AIR
    images = {
        "ct": appearance.block_average(appearance.add_texture(plain["ct"], tissue, texture, 3.0, True), factor),
        "t1": appearance.block_average(appearance.add_texture(plain["t1"], tissue, texture, 0.02, False), factor),
        "t2": appearance.block_average(appearance.add_texture(plain["t2"], tissue, texture, 0.02, False), factor),
    }
    return labels, images, values, record


def build_subject(output: Path, index: int, size: str, seed: int, anatomy_name: str = "mni152") -> dict:
    """Generate and write one subject.

    Args:
        output: cohort folder.
        index: 0-based subject index.
        size: ``small`` or ``full``.
        seed: cohort seed.
        anatomy_name: ``mni152`` or ``procedural``.

    Returns:
        The subject's manifest entry.
    """
    geometry = cohort_geometry(size)
    subject = subject_name(index)
    rng = subject_rng(seed, index)
    uid_seed = f"preprocessing-demo/{seed}/{subject}"

    # --- truth: anatomy and tissue contrast in the common space -----------------------------------
    f = geometry.supersample
    truth = geometry.truth
    labels, truth_images, values, anatomy_record = _render_truth(supersampled_grid(geometry), f, anatomy_name, rng)
    truth_dir = output / "truth" / subject
    _save_nifti(truth_dir / "labels.nii.gz", labels, truth)
    _save_nifti(truth_dir / "ct.nii.gz", np.rint(truth_images["ct"]).astype(np.int16), truth)
    for modality in ("t1", "t2"):
        _save_nifti(truth_dir / f"{modality}.nii.gz", truth_images[modality].astype(np.float32), truth)

    poses = {m: Pose.random(rng) for m in appearance.MODALITIES}
    truth_landmarks = anatomy.landmarks_from_labels(labels, truth)
    names = sorted(truth_landmarks)
    truth_points = np.array([truth_landmarks[n] for n in names])
    landmarks = {"truth": truth_landmarks}
    for modality, pose in poses.items():
        raw_points = pose.truth_to_raw(truth_points)
        landmarks[modality] = {n: [round(float(v), 4) for v in p] for n, p in zip(names, raw_points)}
    atomic_write_json(truth_dir / "landmarks.json", landmarks)
    atomic_write_json(truth_dir / "pose.json", {m: p.to_dict() for m, p in poses.items()})

    # --- MR: IXI-like NIfTI with bias field and Rician noise ---------------------------------------
    mri_dir = output / "raw" / "mri"
    for modality, grid, noise_reference in (("t1", geometry.t1, anatomy.WHITE_MATTER), ("t2", geometry.t2, anatomy.CSF)):
        raw = render_in_raw(truth_images[modality], truth, poses[modality], grid, order=1, cval=0.0)
        raw *= appearance.mr_bias_field(grid.shape, rng)
        raw = appearance.add_rician_noise(raw, 0.025 * values[modality][noise_reference], rng)
        _save_nifti(mri_dir / f"{subject}-{modality.upper()}.nii.gz", np.rint(raw).astype(np.int16), grid)

    # --- CT: head holder, noise, DICOM series --------------------------------------------------------
    ct_grid = geometry.ct
    ct = render_in_raw(truth_images["ct"], truth, poses["ct"], ct_grid, order=1, cval=-1000.0)
    ct_labels = render_in_raw(labels, truth, poses["ct"], ct_grid, order=0, cval=anatomy.AIR)
    ct, artefact = add_head_holder(ct, ct_labels != anatomy.AIR, ct_grid, rng)
    ct_labels[artefact > 0] = artefact[artefact > 0]
    _save_nifti(truth_dir / "ct_raw_labels.nii.gz", ct_labels, ct_grid)
    ct = appearance.add_ct_noise(ct, geometry.ct_noise_hu, rng)
    identity = StudyIdentity.random(rng, uid_seed)
    study_dir = output / "raw" / "ct" / subject / "Unknown Study"
    series = [{"description": "CT PLAIN THIN", "folder": "CT PLAIN THIN", "localizer": False,
               "slice_thickness": ct_grid.spacing[2],
               "files": write_axial_series(study_dir / "CT PLAIN THIN", ct, ct_grid, identity,
                                           description="CT PLAIN THIN", series_number=2, uid_seed=uid_seed)}]
    if has_thick_series(index):
        t = geometry.thick_factor
        n = ct_grid.shape[2] // t
        thick = ct[:, :, : n * t].reshape(ct_grid.shape[0], ct_grid.shape[1], n, t).mean(axis=3)
        thick_grid = Grid(ct_grid.shape[:2] + (n,), ct_grid.spacing[:2] + (ct_grid.spacing[2] * t,), ct_grid.direction,
                          ct_grid.index_to_world(np.array([0.0, 0.0, (t - 1) / 2])))
        series.append({"description": "CT PLAIN THICK", "folder": "CT PLAIN THICK", "localizer": False,
                       "slice_thickness": thick_grid.spacing[2],
                       "files": write_axial_series(study_dir / "CT PLAIN THICK", thick, thick_grid, identity,
                                                   description="CT PLAIN THICK", series_number=3, uid_seed=uid_seed)})
    if has_localizer(index):
        series.append({"description": "TOPOGRAM", "folder": "CT LOCALIZER", "localizer": True, "slice_thickness": None,
                       "files": write_localizer(study_dir / "CT LOCALIZER", ct, ct_grid, identity, series_number=1,
                                                uid_seed=uid_seed)})

    return {
        "subject": subject,
        "ct": {"study": f"raw/ct/{subject}/Unknown Study", "series": series},
        "mri": {"T1": f"raw/mri/{subject}-T1.nii.gz", "T2": f"raw/mri/{subject}-T2.nii.gz"},
        "truth": {name: f"truth/{subject}/{name}" for name in
                  ("t1.nii.gz", "t2.nii.gz", "ct.nii.gz", "labels.nii.gz", "ct_raw_labels.nii.gz",
                   "landmarks.json", "pose.json")},
        "anatomy": anatomy_record,
    }


def build_demo_cohort(output: str | os.PathLike, n_subjects: int = 12, size: str = "full", seed: int = 0,
                      workers: int | None = None, progress: bool = True, anatomy_name: str = "mni152") -> dict:
    """Write a demo cohort of ``n_subjects`` to ``output`` (see docs/data.md for the layout).

    Args:
        output: destination folder (created if needed).
        n_subjects: number of subjects (≥ 1).
        size: ``small`` or ``full``.
        seed: the same seed gives byte-identical files.
        workers: parallel processes (default: one per core, at most ``n_subjects``).
        progress: show a progress bar.
        anatomy_name: ``mni152`` (the template brain, default) or ``procedural`` (the phantom).

    Returns:
        The manifest, also written to ``output/manifest.json``.

    Raises:
        ValueError: bad number of subjects, size or anatomy name.
        preprocessing.demo.template.TemplateMissingError: ``mni152`` without nilearn's template files.
    """
    from tqdm import tqdm

    from preprocessing.demo.preview import write_preview

    if n_subjects < 1:
        raise ValueError(f"the number of subjects must be at least 1, not {n_subjects}")
    cohort_geometry(size)  # validates the size and the anatomy before any work starts
    check_anatomy(anatomy_name)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, n_subjects))
    entries: dict[int, dict] = {}
    bar = tqdm(total=n_subjects, desc=f"demo cohort ({size}, {anatomy_name})", unit="subject", disable=not progress)
    if workers == 1:
        for i in range(n_subjects):
            entries[i] = build_subject(output, i, size, seed, anatomy_name)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(build_subject, output, i, size, seed, anatomy_name): i for i in range(n_subjects)}
            from concurrent.futures import as_completed

            for future in as_completed(futures):
                entries[futures[future]] = future.result()
                bar.update()
    bar.close()
    manifest = {
        "description": "Synthetic demo cohort with paired ground truth (see docs/data.md)",
        "size": size,
        "seed": seed,
        "anatomy": anatomy_name,
        "subjects": [entries[i] for i in range(n_subjects)],
        "labels": {str(k): v for k, v in anatomy.LABEL_NAMES.items()}
        | {"9": "holder_plate", "10": "couch", "11": "contact_pad"},
    }
    atomic_write_json(output / "manifest.json", manifest)
    write_preview(output, manifest["subjects"][0]["subject"], size)
    return manifest
