"""Every bundle's model card: present, linked, complete, its images and links real, the diagnostic limitation stated."""

import json
import re
from pathlib import Path

import pytest
from monai.bundle import verify_metadata

from tests.bundles.helpers import BUNDLES

SCHEMA = Path(__file__).resolve().parent / "meta_schema_20240725.json"
CARD = Path("docs") / "model_card.md"
REQUIRED_SECTIONS = (
    "Model details",
    "Intended use",
    "Training data",
    "Measured performance",
    "Validation image",
    "Limitations",
    "How to use",
    "Ethical considerations",
)
# Markdown links and images, [text](target) / ![alt](target); the target ends at the first space or ")".
LINK = re.compile(r"(!?)\[[^\]]*\]\(([^)\s]+)\)")
BUNDLE_NAMES = sorted(path.parent.parent.name for path in BUNDLES.glob("*/configs/metadata.json"))


def sections(text: str) -> dict[str, str]:
    """The card's level-2 sections, by heading, each with its text up to the next level-2 heading."""
    parts = re.split(r"^## +(.+?)\s*$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def card_problems(bundle: Path) -> list[str]:
    """What is wrong with ``bundle``'s model card and its link from the README (empty when nothing is)."""
    card = bundle / CARD
    if not card.is_file():
        return [f"{card}: missing"]
    text = card.read_text(encoding="utf-8")
    found = sections(text)
    problems = [f"{card}: no section '## {name}'" for name in REQUIRED_SECTIONS if name not in found]
    limitations = found.get("Limitations", "")
    if not re.search(r"\*\*[^*]*not for diagnosis[^*]*\*\*", limitations, flags=re.IGNORECASE):
        problems.append(f"{card}: the Limitations section does not state, in bold, 'not for diagnosis'")
    for is_image, target in LINK.findall(text):
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue
        resolved = (card.parent / target.split("#", 1)[0]).resolve()
        if not resolved.exists():
            problems.append(f"{card}: {'image' if is_image else 'link'} {target} does not exist")
        elif is_image and resolved.parent != (bundle / "docs" / "images").resolve():
            problems.append(f"{card}: image {target} is not in the bundle's docs/images/")
    readme = bundle / "docs" / "README.md"
    if not readme.is_file() or "(model_card.md)" not in readme.read_text(encoding="utf-8"):
        problems.append(f"{readme}: no link to model_card.md")
    return problems


def test_there_are_bundles_to_check():
    assert {"cyclegan_t1_t2", "cyclegan_ct_t2", "pix2pix_t1_t2", "pix2pix_mr_ct", "unit_t1_t2"} <= set(BUNDLE_NAMES)


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_model_card_is_complete_and_linked(name):
    assert card_problems(BUNDLES / name) == []


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_model_card_shows_an_image_or_says_there_is_none(name):
    validation = sections((BUNDLES / name / CARD).read_text(encoding="utf-8"))["Validation image"]
    images = [target for is_image, target in LINK.findall(validation) if is_image]
    assert images or re.search(r"\bnone\b", validation, flags=re.IGNORECASE), validation


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_metadata_names_the_card_and_still_validates(name):
    meta_file = BUNDLES / name / "configs" / "metadata.json"
    metadata = json.loads(meta_file.read_text(encoding="utf-8"))
    assert (BUNDLES / name / metadata["model_card"]).resolve() == (BUNDLES / name / CARD).resolve()
    verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA))


def test_checker_reports_each_problem_of_a_broken_card(tmp_path):
    bundle = tmp_path / "broken"
    (bundle / "docs" / "images").mkdir(parents=True)
    (bundle / "docs" / "README.md").write_text("# Broken\n\nNo card link here.\n", encoding="utf-8")
    assert card_problems(bundle) == [f"{bundle / CARD}: missing"]

    (bundle / "docs" / "other.png").write_bytes(b"\x89PNG")
    body = "\n".join(f"## {name}\n\ntext\n" for name in REQUIRED_SECTIONS if name != "Training data")
    (bundle / CARD).write_text(
        "# Card\n\n" + body.replace("## Limitations\n\ntext", "## Limitations\n\nnot for diagnosis, but not in bold")
        + "\n![grid](images/absent.png) ![elsewhere](other.png) [results](results/absent.csv) [web](https://x.org/a)\n",
        encoding="utf-8")
    card = bundle / CARD
    assert card_problems(bundle) == [
        f"{card}: no section '## Training data'",
        f"{card}: the Limitations section does not state, in bold, 'not for diagnosis'",
        f"{card}: image images/absent.png does not exist",
        f"{card}: image other.png is not in the bundle's docs/images/",
        f"{card}: link results/absent.csv does not exist",
        f"{bundle / 'docs' / 'README.md'}: no link to model_card.md",
    ]
