"""Pseudonymous subject IDs and redaction of identifying text.

Source folder names of a PACS export are often patient names or record numbers, and DICOM
headers carry the patient's name, ID and birth date. Outputs, file names, reports and logs must
hold none of them. Every subject therefore gets a pseudonym, ``<prefix><keyed hash>``: an
HMAC-SHA-256 of the source folder name under a salt from the configuration — deterministic (the
same subject keeps its ID across runs and re-exports) but not reversible without the salt. The
map back to source names is written only on request.

Error messages are the one place where source text could slip through (they name the bad file);
:class:`Redactor` replaces source names by pseudonyms and identifying DICOM values by a
placeholder before a message is reported or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import pydicom

__all__ = ["IDENTIFYING_TAGS", "REDACTED", "Redactor", "dicom_identifiers", "pseudonymise", "pseudonymise_all"]

#: DICOM attributes whose values identify the patient or the visit (DICOM PS3.15 basic profile,
#: the ones a PACS export usually fills).
IDENTIFYING_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames",
    "PatientAddress", "PatientTelephoneNumbers", "AccessionNumber", "ReferringPhysicianName",
    "PerformingPhysicianName", "InstitutionName", "InstitutionAddress", "StudyID",
)
REDACTED = "[redacted]"
# Shorter fragments (initials, "M", "F") would erase ordinary words from the messages.
_MIN_FRAGMENT = 3


def pseudonymise(source_name: str, salt: str, prefix: str = "sub-", length: int = 12) -> str:
    """Pseudonym of one subject: ``prefix`` + the first ``length`` hex digits of HMAC-SHA-256(salt, name).

    Args:
        source_name: the subject's source folder (or file name stem).
        salt: the key of the hash.
        prefix: text before the hash.
        length: hex digits kept (12 digits: collisions become likely only beyond ~10^7 subjects).

    Returns:
        The pseudonym.
    """
    digest = hmac.new(salt.encode("utf-8"), source_name.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{prefix}{digest[:length]}"


def pseudonymise_all(source_names: Iterable[str], salt: str, prefix: str = "sub-", length: int = 12) -> dict[str, str]:
    """Pseudonyms of a cohort, checked for collisions.

    Returns:
        ``{source name: pseudonym}``.

    Raises:
        ValueError: two source names share a pseudonym (raise ``length``).
    """
    mapping = {name: pseudonymise(name, salt, prefix, length) for name in source_names}
    seen: dict[str, str] = {}
    for name, pseudonym in mapping.items():
        if pseudonym in seen:
            raise ValueError(f"two subjects share the pseudonym {pseudonym}; increase pseudonym.length")
        seen[pseudonym] = name
    return mapping


def _text_values(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [text for item in value for text in _text_values(item)]
    text = str(value).strip()
    return [text] if text else []


def dicom_identifiers(folder: str | os.PathLike, max_files: int = 50) -> set[str]:
    """Identifying values (:data:`IDENTIFYING_TAGS`) found in the DICOM headers under ``folder``.

    Reads headers only and tolerates damaged or non-DICOM files, since it is also called on the
    folder of a subject whose reading failed (to redact the error message). Person names are also
    split into their components, and dates added in ``YYYY-MM-DD`` form.

    Args:
        folder: a subject's DICOM folder.
        max_files: headers read at most; one study shares its patient tags.

    Returns:
        The values to redact (possibly empty).
    """
    values: set[str] = set()
    folder = Path(folder)
    if not folder.is_dir():
        return values
    seen = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if seen >= max_files:
            break
        try:
            with warnings.catch_warnings():  # forced reads of non-DICOM files warn about their "VR"
                warnings.simplefilter("ignore")
                header = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=list(IDENTIFYING_TAGS))
        except Exception:  # any damaged file: it cannot leak what cannot be read
            continue
        found = False
        for keyword in IDENTIFYING_TAGS:
            for text in _text_values(header.get(keyword)):
                found = True
                values.add(text)
                parts = [p for p in re.split(r"[\^\s]+", text) if len(p) >= _MIN_FRAGMENT]
                values.update(parts)
                if len(parts) > 1:
                    values.add(" ".join(parts))
                if re.fullmatch(r"\d{8}", text):
                    values.add(f"{text[:4]}-{text[4:6]}-{text[6:]}")
        seen += found
    return {v for v in values if len(v) >= _MIN_FRAGMENT}


class Redactor:
    """Replace source names and identifying values in text.

    Source names (folder names, file name stems, the input root) are replaced where they stand as
    a path component — after the start of the text, ``/``, ``\\`` or a quote, and before the end,
    a separator, ``-``, ``_``, ``.``, ``:`` or a quote — so that a subject folder called ``empty``
    does not turn "folder is empty" into nonsense. Identifying values (patient name, ID, birth
    date...) are replaced wherever they occur.

    Args:
        names: ``{source text: replacement}`` (e.g. source folder name -> pseudonym), replaced
            as path components; matched case-insensitively, longest first so that a name inside
            a longer one is not replaced piecemeal.
        identifiers: values replaced by :data:`REDACTED` anywhere.
        anywhere: ``{text: replacement}`` replaced anywhere (e.g. the input folder -> ``<input>``).
    """

    _BEFORE = r"(?:(?<=^)|(?<=[/\\'\"(]))"
    _AFTER = r"(?=$|[/\\\-_.:'\")\s,;])"

    def __init__(self, names: Mapping[str, str] | None = None, identifiers: Iterable[str] = (),
                 anywhere: Mapping[str, str] | None = None):
        self._names = {k: v for k, v in (names or {}).items() if k}
        self._anywhere = {k: v for k, v in (anywhere or {}).items() if k}
        self._identifiers = sorted({v for v in identifiers if v}, key=len, reverse=True)
        table = {k.lower(): v for k, v in self._names.items()}
        table.update({k.lower(): v for k, v in self._anywhere.items()})
        table.update({v.lower(): REDACTED for v in self._identifiers})
        self._table = table
        # Longest text first whatever its kind: at one position the first alternative that matches wins.
        patterns = [(k, re.escape(k)) for k in [*self._anywhere, *self._identifiers]]
        patterns += [(k, f"{self._BEFORE}{re.escape(k)}{self._AFTER}") for k in self._names]
        patterns.sort(key=lambda item: len(item[0]), reverse=True)
        self._pattern = re.compile("|".join(p for _, p in patterns), re.IGNORECASE) if patterns else None

    def __call__(self, text: str) -> str:
        """``text`` with every source name and identifier replaced."""
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda match: self._table[match.group(0).lower()], text)

    def extended(self, names: Mapping[str, str] | None = None, identifiers: Iterable[str] = ()) -> "Redactor":
        """A redactor with more names and identifiers."""
        return Redactor({**self._names, **(names or {})}, [*self._identifiers, *identifiers], self._anywhere)
