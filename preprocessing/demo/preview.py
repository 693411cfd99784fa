"""``preview.png``: one subject's CT, T1 and T2 as the scanners delivered them and as the truth has them."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from medgan_common.atomic import atomic_write_with  # noqa: E402
from preprocessing.demo.anatomy import VENTRICLE  # noqa: E402
from preprocessing.demo.grid import grid_from_affine_ras, grid_from_sitk, resample_to_grid  # noqa: E402


def load_raw_ct(series_folder: Path):
    """Read a demo CT series with SimpleITK (HU) as ``(grid, array)``."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series_folder)))
    return grid_from_sitk(reader.Execute())


def load_nifti(path: Path):
    """Read a NIfTI file as ``(grid, float32 array)``."""
    image = nib.load(str(path))
    return grid_from_affine_ras(image.shape, image.affine), np.asarray(image.dataobj, dtype=np.float32)


def write_preview(output: Path, subject: str, size: str) -> Path:
    """Draw raw (top row, in scanner coordinates on the truth grid: misaligned) and truth (bottom row)
    axial slices of CT, T1 and T2 through the lateral ventricles.

    Args:
        output: cohort folder.
        subject: subject ID.
        size: cohort size (only for the title).

    Returns:
        Path of the PNG.
    """
    truth_grid, labels = load_nifti(output / "truth" / subject / "labels.nii.gz")
    # Through the lateral ventricles: the slice radiologists look at first.
    k = int(round(np.argwhere(labels == VENTRICLE).mean(axis=0)[2]))
    raw = {
        "CT": load_raw_ct(output / "raw" / "ct" / subject / "Unknown Study" / "CT PLAIN THIN"),
        "T1": load_nifti(output / "raw" / "mri" / f"{subject}-T1.nii.gz"),
        "T2": load_nifti(output / "raw" / "mri" / f"{subject}-T2.nii.gz"),
    }
    truth = {name: load_nifti(output / "truth" / subject / f"{name.lower()}.nii.gz") for name in raw}
    windows = {"CT": (-160.0, 240.0)}
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.6), facecolor="black")
    for column, name in enumerate(raw):
        grid, array = raw[name]
        raw_slice = resample_to_grid(np.ascontiguousarray(array, dtype=np.float32), grid, truth_grid, order=1,
                                     cval=float(array.min()))[:, :, k]
        truth_slice = truth[name][1][:, :, k]
        low, high = windows.get(name, (0.0, float(np.percentile(truth_slice, 99.5))))
        for row, (image, title) in enumerate(((raw_slice, f"{name} raw"), (truth_slice, f"{name} truth"))):
            ax = axes[row, column]
            # Rows of the displayed image: anterior at the top; columns: patient's right on the left (radiological).
            ax.imshow(image.T, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            ax.set_title(title, color="white", fontsize=11)
            ax.axis("off")
    fig.suptitle(f"demo cohort ({size}) — {subject}: raw scans (misaligned, head holder, bias, noise) vs truth",
                 color="white", fontsize=10)
    fig.tight_layout()
    path = output / "preview.png"
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=80, facecolor="black"))
    plt.close(fig)
    return path
