"""PACS round trip over DICOMweb: pull CT studies into the runner's raw layout, push synthetic series back.

``python -m preprocessing pull --pacs URL (--study UID ... | --query "Modality=CT&StudyDate=20240101-") --output DIR``
writes every CT series of the matching studies as ``DIR/raw/ct/<patient>/<study UID>/<series UID>/<instance UID>.dcm``
(the layout ``python -m preprocessing run --input DIR`` reads; see docs/data.md), plus
``DIR/pacs_pull.json``, what was pulled and what was not (a study without CT is reported there,
study by study). These files hold the identifiers of the PACS: they belong on the identified side,
like any PACS export; the runner's outputs carry pseudonyms only.

``python -m preprocessing push --pacs URL DIR`` sends every DICOM file below ``DIR`` (e.g. a
bundle's DICOM output, :mod:`modality_translation.inference.dicom_output`) back into its study on
the PACS. Only series marked synthetic are sent (``ImageType`` DERIVED, ``SYNTHETIC`` in the
SeriesDescription): an acquired image is never overwritten. The patient and study tags are taken
from the study on the PACS just before sending, in memory only, so that the series files under
its patient there while no identifier is written by this project.

Credentials never appear on the command line, in a URL or in a message: they come from the
environment (``MEDGAN_PACS_USER``, ``MEDGAN_PACS_PASSWORD``) or from a JSON file
``{"user": ..., "password": ...}`` named by ``--credentials`` or ``MEDGAN_PACS_CREDENTIALS``.
Every request has a timeout; connection failures and 502/503/504 answers are retried a bounded
number of times with exponential back-off.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pydicom

from medgan_common.atomic import atomic_write_json
from medgan_common.errors import PreprocessingError

logger = logging.getLogger(__name__)

__all__ = ["PacsError", "PacsSettings", "connect", "pull_studies", "push_series", "read_credentials"]

USER_VARIABLE = "MEDGAN_PACS_USER"
PASSWORD_VARIABLE = "MEDGAN_PACS_PASSWORD"
CREDENTIALS_VARIABLE = "MEDGAN_PACS_CREDENTIALS"
#: Patient and study attributes a pushed series takes from its study on the PACS.
STUDY_ATTRIBUTES = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyDescription")
#: ``--query`` keys with another name in a QIDO study search.
_QUERY_ALIASES = {"Modality": "ModalitiesInStudy"}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class PacsError(PreprocessingError):
    """The PACS cannot be reached, refuses the credentials, or answers what this command cannot use."""

    def __init__(self, reason: str):
        super().__init__(None, reason)


@dataclass(frozen=True)
class PacsSettings:
    """How to talk to a PACS.

    Attributes:
        url: the DICOMweb root, e.g. ``http://pacs:8042/dicom-web``.
        user, password: HTTP basic credentials (``None``: none).
        timeout_s: seconds to connect, and seconds between bytes of an answer.
        retries: times a failed connection or a 502/503/504 answer is tried again.
    """

    url: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 20.0
    retries: int = 2


def read_credentials(path: str | os.PathLike | None = None,
                     environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """``(user, password)`` from a JSON file (``path``, else ``MEDGAN_PACS_CREDENTIALS``) or the environment.

    Raises:
        PacsError: the file cannot be read or lacks ``user`` / ``password`` (the message names the
            file, never its content).
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get(CREDENTIALS_VARIABLE)
    if path:
        try:
            record = json.loads(Path(path).read_text())
            return str(record["user"]), str(record["password"])
        except OSError as error:
            raise PacsError(f"cannot read the credentials file {str(path)!r}: {error.strerror}") from None
        except (ValueError, KeyError, TypeError):
            raise PacsError(f"credentials file {str(path)!r}: expected JSON {{\"user\": ..., \"password\": ...}}") \
                from None
    return environ.get(USER_VARIABLE), environ.get(PASSWORD_VARIABLE)


def connect(settings: PacsSettings):
    """A ``dicomweb_client.DICOMwebClient`` with the credentials, timeouts and bounded retries.

    Raises:
        PacsError: the URL is not http(s) or carries credentials.
    """
    import requests
    from dicomweb_client import DICOMwebClient
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    parts = urlsplit(settings.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PacsError(f"PACS URL must be http(s)://HOST[:PORT]/PATH, got {parts.scheme or 'no scheme'}://"
                        f"{parts.hostname or ''}")
    if parts.username or parts.password:
        raise PacsError(f"the PACS URL must not hold credentials: set {USER_VARIABLE} and {PASSWORD_VARIABLE} "
                        f"or use --credentials FILE")
    session = requests.Session()
    if settings.user is not None:
        session.auth = (settings.user, settings.password or "")
    # Connection failures are retried here; HTTP answers by dicomweb-client (below).
    retry = Retry(total=settings.retries, connect=settings.retries, read=0, status=0, backoff_factor=0.5,
                  raise_on_status=False)
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    client = DICOMwebClient(settings.url, session=session, timeout=settings.timeout_s)
    client.set_http_retry_params(retry=True, max_attempts=settings.retries + 1, wait_exponential_multiplier=500,
                                 retriable_error_codes=(502, 503, 504))
    return client


def _explained(error: Exception, settings: PacsSettings, what: str) -> PacsError:
    """A one-line reason for a failed request, naming the PACS (host only) and never the credentials."""
    import requests

    host = urlsplit(settings.url).netloc
    if isinstance(error, requests.HTTPError) and error.response is not None:
        status = error.response.status_code
        if status in (401, 403):
            return PacsError(f"the PACS at {host} refused the credentials (HTTP {status}) while {what}: check "
                             f"{USER_VARIABLE} / {PASSWORD_VARIABLE} or the credentials file")
        return PacsError(f"the PACS at {host} answered HTTP {status} while {what}")
    if isinstance(error, requests.Timeout):
        return PacsError(f"the PACS at {host} did not answer within {settings.timeout_s:g} s while {what}")
    if isinstance(error, requests.ConnectionError):
        return PacsError(f"cannot reach the PACS at {host} while {what} ({settings.retries + 1} tries)")
    return PacsError(f"the PACS at {host} failed while {what}: {type(error).__name__}")


def _value(record: Mapping[str, Any], tag: str) -> Any:
    """First value of a DICOM JSON attribute (``tag`` as a keyword), or None."""
    from pydicom.datadict import tag_for_keyword

    element = record.get(f"{tag_for_keyword(tag):08X}", {})
    values = element.get("Value") or [None]
    return values[0]


def _folder_name(text: str | None, fallback: str) -> str:
    name = _SAFE_NAME.sub("_", str(text or "")).strip("._")
    return name or fallback


def parse_query(query: str) -> dict[str, str]:
    """``"Modality=CT&StudyDate=20240101-"`` as QIDO study search filters.

    Raises:
        PacsError: a part without ``=`` or with an empty key.
    """
    filters = {}
    for part in filter(None, query.split("&")):
        if "=" not in part or not part.split("=", 1)[0].strip():
            raise PacsError(f"--query part {part!r}: expected KEY=VALUE (e.g. Modality=CT&StudyDate=20240101-)")
    for key, value in parse_qsl(query, keep_blank_values=True):
        filters[_QUERY_ALIASES.get(key.strip(), key.strip())] = value
    return filters


def pull_studies(settings: PacsSettings, output: str | os.PathLike, studies: Sequence[str] = (),
                 query: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Download every CT series of the chosen studies into ``output/raw/ct/<patient>/<study>/<series>/``.

    A study is written into a temporary folder and renamed into place when all its CT series are
    complete: a failed or interrupted pull leaves no partial study. A study already in place is
    kept (rerun to fetch the rest).

    Args:
        settings: the PACS.
        output: the folder to write (created when the first study arrives).
        studies: StudyInstanceUIDs to pull.
        query: QIDO study search filters (e.g. ``{"ModalitiesInStudy": "CT", "StudyDate": "20240101-"}``).

    Returns:
        The record also written to ``output/pacs_pull.json``: per study its patient folder,
        status (``ok``, ``already-pulled``, ``no-ct``, ``failed``), reason and series.

    Raises:
        PacsError: the PACS cannot be reached or refuses the credentials (nothing is written then),
            or neither studies nor a query were given.
    """
    if not studies and not query:
        raise PacsError("give --study UID or --query FILTERS")
    client = connect(settings)
    found: list[dict] = []
    try:
        if query:
            found = _all_studies(client, dict(query))
        for uid in studies:
            matches = client.search_for_studies(search_filters={"StudyInstanceUID": uid})
            found.extend(matches if matches else [{"0020000D": {"vr": "UI", "Value": [uid]}, "missing": True}])
    except Exception as error:  # every failure of the search means nothing can be pulled
        raise _explained(error, settings, "searching for studies") from None
    root = Path(output)
    rows = []
    for study in found:
        uid = _value(study, "StudyInstanceUID")
        patient = _folder_name(_value(study, "PatientID"), "unknown-patient")
        row = {"study": uid, "patient_folder": patient, "series": []}
        rows.append(row)
        if study.get("missing"):
            row.update(status="failed", reason="no such study on the PACS")
            continue
        try:
            row.update(_pull_study(client, root, patient, uid))
        except Exception as error:  # one study's failure must not stop the others
            reason = error.reason if isinstance(error, PacsError) else str(_explained(error, settings,
                                                                                     f"retrieving study {uid}"))
            row.update(status="failed", reason=reason)
    record = {"pacs": urlsplit(settings.url).netloc, "studies": rows,
              "counts": {s: sum(r["status"] == s for r in rows) for s in ("ok", "already-pulled", "no-ct", "failed")}}
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "pacs_pull.json", record)
    return record


def _all_studies(client, filters: dict[str, str], page: int = 100) -> list[dict]:
    """Every study matching ``filters``, a page at a time (dicomweb-client's ``get_remaining`` does not end on Orthanc)."""
    found: list[dict] = []
    while True:
        batch = client.search_for_studies(search_filters=filters, limit=page, offset=len(found))
        found.extend(batch)
        if len(batch) < page:
            return found


def _pull_study(client, root: Path, patient: str, uid: str) -> dict[str, Any]:
    """One study's CT series into ``root/raw/ct/<patient>/<uid>/``; its row of the pull record."""
    series = client.search_for_series(uid)
    ct_series = [s for s in series if _value(s, "Modality") == "CT"]
    if not ct_series:
        found = sorted({str(_value(s, "Modality")) for s in series})
        return {"status": "no-ct", "reason": f"no CT series in the study (modalities: {', '.join(found) or 'none'})"}
    names = [_folder_name(_value(s, "SeriesInstanceUID"), f"series-{i}") for i, s in enumerate(ct_series)]
    final = root / "raw" / "ct" / patient / _folder_name(uid, "study")
    if final.is_dir():
        return {"status": "already-pulled", "series": names}
    # Staged beside the patient folders, under a hidden name that input discovery skips: a pull
    # killed mid-study must not leave a second copy of a series inside a subject's folder.
    staging = root / "raw" / "ct" / f".tmp-{final.name}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for name, record in zip(names, ct_series):
            folder = staging / name
            folder.mkdir(parents=True)
            for index, dataset in enumerate(client.iter_series(uid, _value(record, "SeriesInstanceUID"))):
                instance = _folder_name(getattr(dataset, "SOPInstanceUID", None), f"instance-{index}")
                dataset.save_as(folder / f"{instance}.dcm", enforce_file_format=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"status": "ok", "series": names}


def _synthetic_problem(dataset: pydicom.Dataset) -> str | None:
    image_type = [str(v).upper() for v in (dataset.get("ImageType") or [])]
    if not image_type or image_type[0] != "DERIVED":
        return "ImageType is not DERIVED"
    if "SYNTHETIC" not in str(dataset.get("SeriesDescription", "")).upper():
        return "SeriesDescription does not say SYNTHETIC"
    return None


def push_series(settings: PacsSettings, folder: str | os.PathLike, batch: int = 32) -> dict[str, Any]:
    """Send every synthetic DICOM file below ``folder`` into its study on the PACS.

    Args:
        settings: the PACS.
        folder: a series folder or a folder of series (``*.dcm`` below it).
        batch: instances per STOW request.

    Returns:
        ``{"studies": {study UID: instances sent}, "series": [series UIDs]}``.

    Raises:
        PacsError: no DICOM file, a file that is not DICOM or not marked synthetic (named, nothing
            sent then), a study that is not on the PACS, an unreachable PACS or refused credentials.
    """
    files = sorted(Path(folder).rglob("*.dcm"))
    if not files:
        raise PacsError(f"no .dcm file below {folder}")
    by_study: dict[str, list[Path]] = {}
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            raise PacsError(f"{path}: not a readable DICOM file") from None
        problem = _synthetic_problem(header)
        if problem:
            raise PacsError(f"{path}: {problem}; only series marked synthetic are sent back to the PACS")
        by_study.setdefault(str(header.StudyInstanceUID), []).append(path)
    client = connect(settings)
    sent: dict[str, int] = {}
    series: set[str] = set()
    for uid, paths in by_study.items():
        try:
            studies = client.search_for_studies(search_filters={"StudyInstanceUID": uid}, fields=list(STUDY_ATTRIBUTES))
        except Exception as error:
            raise _explained(error, settings, "looking up the source study") from None
        if not studies:
            raise PacsError(f"study {uid} of {paths[0].parent} is not on the PACS: a synthetic series goes back "
                            "into its source study")
        source = studies[0]
        for start in range(0, len(paths), batch):
            datasets = []
            for path in paths[start: start + batch]:
                dataset = pydicom.dcmread(path)
                for keyword in STUDY_ATTRIBUTES:  # in memory only: nothing identifying is written here
                    value = _value(source, keyword)
                    if value is not None:
                        setattr(dataset, keyword, value["Alphabetic"] if isinstance(value, dict) else value)
                datasets.append(dataset)
                series.add(str(dataset.SeriesInstanceUID))
            try:
                client.store_instances(datasets, study_instance_uid=uid)
            except Exception as error:
                raise _explained(error, settings, f"sending {paths[start].parent.name}") from None
        sent[uid] = len(paths)
    return {"studies": sent, "series": sorted(series)}
