"""The template's own T1 beside a demo subject's T1 and T2, at the same anatomical position.

``python -m preprocessing.demo.template_comparison --cohort DIR --subject demo001 --output FILE.png``
draws one axial and one coronal slice through the subject's lateral ventricles: the MNI152 T1
carried into the subject's truth space through the subject's own deformation (re-drawn from the
cohort's seed), and the subject's truth T1 and T2. A reader can then judge how close the physics
contrast comes to a real T1, and what the T2 adds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from medgan_common.atomic import atomic_write_with  # noqa: E402
from preprocessing.demo import appearance  # noqa: E402
from preprocessing.demo.anatomy import VENTRICLE  # noqa: E402
from preprocessing.demo.cohort import cohort_geometry, subject_rng, supersampled_grid  # noqa: E402
from preprocessing.demo.template import TEMPLATE_FILES, load_template_maps, template_folder  # noqa: E402
from preprocessing.demo.template_anatomy import TemplateHeadParameters, sample_template, truth_to_template_index  # noqa: E402


def template_t1_in_truth(size: str, seed: int, index: int) -> np.ndarray:
    """The template T1 resampled into one demo subject's truth grid through that subject's deformation.

    Args:
        size: the cohort size (``small`` or ``full``).
        seed: the cohort seed.
        index: the subject's 0-based index.

    Returns:
        float32 array on the truth grid (the template's 0-255 scale).
    """
    geometry = cohort_geometry(size)
    fine = supersampled_grid(geometry)
    rng = subject_rng(seed, index)
    params = TemplateHeadParameters.random(rng)
    maps = load_template_maps()
    # The same draws in the same order as the cohort's build_subject, so the same deformation.
    template_ras, lattice, _ = truth_to_template_index(fine, params, maps, rng)
    t1_image = nib.load(str(template_folder() / TEMPLATE_FILES["t1"]))
    t1 = np.asarray(t1_image.dataobj, dtype=np.float32)
    sampled = sample_template(t1, t1_image.affine, lattice.upsample(template_ras, fine).reshape(3, -1))
    return appearance.block_average(sampled.reshape(fine.shape), geometry.supersample)


def write_template_comparison(cohort: Path, subject: str, output: Path) -> Path:
    """Draw the comparison figure of one subject of a template-anatomy demo cohort.

    Args:
        cohort: the demo cohort folder (its ``manifest.json`` gives size, seed and anatomy).
        subject: subject ID (``demo001``…).
        output: PNG file to write.

    Returns:
        ``output``.

    Raises:
        ValueError: the cohort is not built on the template anatomy, or has no such subject.
    """
    manifest = json.loads((cohort / "manifest.json").read_text())
    if manifest.get("anatomy", "procedural") != "mni152":
        raise ValueError(f"{cohort / 'manifest.json'}: not an mni152 demo cohort; nothing to compare with the template")
    names = [entry["subject"] for entry in manifest["subjects"]]
    if subject not in names:
        raise ValueError(f"{cohort / 'manifest.json'}: no subject {subject!r} (has {', '.join(names)})")
    truth = cohort / "truth" / subject
    labels = np.asarray(nib.load(str(truth / "labels.nii.gz")).dataobj)
    images = {
        "MNI152 T1 (template)": template_t1_in_truth(manifest["size"], manifest["seed"], names.index(subject)),
        f"{subject} T1 (demo truth)": np.asarray(nib.load(str(truth / "t1.nii.gz")).dataobj, dtype=np.float32),
        f"{subject} T2 (demo truth)": np.asarray(nib.load(str(truth / "t2.nii.gz")).dataobj, dtype=np.float32),
    }
    i, j, k = np.rint(np.argwhere(labels == VENTRICLE).mean(axis=0)).astype(int)
    fig, axes = plt.subplots(2, 3, figsize=(10.5, 7.6), facecolor="black")
    for column, (title, volume) in enumerate(images.items()):
        high = float(np.percentile(volume[labels > 0], 99.5))
        # Arrays are LPS-indexed: transposed and flipped so that anterior and superior are up, the
        # patient's right on the left of the picture (radiological convention).
        views = (("axial", volume[::-1, :, k].T), ("coronal", volume[::-1, j, ::-1].T))
        for row, (view, plane) in enumerate(views):
            axis = axes[row, column]
            axis.imshow(plane, cmap="gray", vmin=0.0, vmax=high, interpolation="nearest")
            axis.set_title(f"{title}, {view}", color="white", fontsize=9)
            axis.axis("off")
    fig.suptitle("Template T1 carried into the subject's space, and the subject's physics-based T1 and T2",
                 color="white", fontsize=10)
    fig.tight_layout()
    atomic_write_with(output, lambda tmp: fig.savefig(tmp, dpi=90, facecolor="black", format="png"))
    plt.close(fig)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", required=True, type=Path, help="demo cohort folder (mni152 anatomy)")
    parser.add_argument("--subject", default="demo001", help="subject ID (default: demo001)")
    parser.add_argument("--output", required=True, type=Path, help="PNG file to write")
    args = parser.parse_args(argv)
    try:
        write_template_comparison(args.cohort, args.subject, args.output)
    except (OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
