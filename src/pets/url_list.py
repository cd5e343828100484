"""A data set from a list of photo URLs (the course's `download_images` + `verify_images`).

A list is a CSV of `url,label` rows or a folder of `<label>.txt` files with one URL per line.
Each photo is fetched once into a store shared by every project (`$PETS_PHOTOS`, default
~/.cache/pets/photos), keyed by its URL, in parallel, with a per-request timeout, retries with
back-off, a size cap, and content-type and decode checks; the data set folder then holds
`<label>/<n>.<ext>` (n: the URL's place in its label's list, so a photo keeps its name when an
earlier URL fails) linked from the store. A rerun fetches only what is not in the store yet.
Every URL that gave no photo is listed with its reason (404, timeout, not an image, too big,
duplicate of an earlier photo)."""

from __future__ import annotations

import csv
import hashlib
import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from pets.archive import is_junk, redact_url
from pets.config import DataParams, shown
from pets.errors import PetsError
from pets.files import atomic_path, not_regular, remove, unsafe_name
from pets.images import check_image

# Pillow's format name -> the extension a photo is saved with.
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp"}
EXTENSIONS |= {"TIFF": "tif", "MPO": "jpg"}  # MPO: a phone's multi-picture JPEG
CHUNK = 1 << 16
USER_AGENT = "pets (fast.ai lesson 1 workflow; image download)"


@dataclass(frozen=True)
class Listed:
    """One URL of a list, where it was listed (file and row, for messages) and its label."""

    url: str
    label: str
    where: str  # "urls.csv row 3" or "cat.txt line 2"
    number: int  # its place among its label's URLs, from 1: the photo's file name


@dataclass(frozen=True)
class Fetched:
    """A URL's outcome: the stored photo (with its md5), or why there is none."""

    listed: Listed
    path: Path | None = None
    md5: str = ""
    reason: str = ""


def photo_store() -> Path:
    """Where fetched photos are kept between runs and projects: `$PETS_PHOTOS` or
    ~/.cache/pets/photos."""
    if env := os.environ.get("PETS_PHOTOS"):
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "pets" / "photos"


def _row(url: str, label: str, where: str) -> tuple[str, str, str]:
    url, label = url.strip(), label.strip()
    if not url:
        raise PetsError(f"data.url: {where} has no URL")
    why = unsafe_name(label)
    if why:
        raise PetsError(f"data.url: {where}: label {shown(label)}: {why}")
    return url, label, where


def read_url_list(path: Path) -> list[Listed]:
    """The URLs of a list: a CSV with `url` and `label` columns, or a folder of `<label>.txt`
    files (blank lines and `#` comments skipped). A row without a URL, or a label that is not
    safe as a folder name, is a one-line error naming the file and row."""
    rows: list[tuple[str, str, str]] = []
    if path.is_dir():
        lists = sorted(
            file
            for file in path.glob("*.txt")
            if file.is_file() and not is_junk(file.relative_to(path).as_posix())
        )
        for file in lists:
            for number, line in enumerate(_text(file).splitlines(), 1):
                if line.strip() and not line.lstrip().startswith("#"):
                    rows.append(_row(line, file.stem, f"{file} line {number}"))
    else:
        reader = csv.DictReader(_text(path).splitlines())
        if not {"url", "label"} <= set(reader.fieldnames or []):
            raise PetsError(
                f"data.url: {path} needs a header row with columns url,label "
                f"(has {', '.join(reader.fieldnames or []) or 'none'})"
            )
        for number, record in enumerate(reader, 2):
            rows.append(_row(record["url"] or "", record["label"] or "", f"{path} row {number}"))
    if not rows:
        raise PetsError(f"data.url: {path} lists no URL")
    if not any(urllib.parse.urlsplit(url).scheme in ("http", "https") for url, _, _ in rows):
        raise PetsError(f"data.url: {path} lists no http(s) URL (e.g. {rows[0][2]})")
    counts: dict[str, int] = {}
    listed = []
    for url, label, where in rows:
        counts[label] = counts.get(label, 0) + 1
        listed.append(Listed(url, label, where, counts[label]))
    return listed


def _text(path: Path) -> str:
    why = not_regular(path)
    if why:
        raise PetsError(f"data.url: {path} is {why}")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PetsError(f"data.url: {path} is not UTF-8 text (byte {exc.start})") from None


def _key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def _stored(store: Path, url: str) -> tuple[Path, str] | None:
    """The photo already fetched for `url`, and its md5, if the store has it."""
    try:
        meta = json.loads((store / f"{_key(url)}.json").read_text())
    except (OSError, ValueError):
        return None
    photo = store / meta.get("file", "")
    return (photo, meta["md5"]) if meta.get("url") == url and photo.is_file() else None


class _Refused(Exception):
    """A response that retrying will not change (404, not an image, too big)."""


def _get(url: str, part: Path, settings: DataParams) -> None:
    """One request: the body into `part`, or `_Refused` / a transient error."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=settings.timeout) as response:
        kind = response.headers.get_content_type()
        if not kind.startswith("image/"):
            raise _Refused(f"not an image (content type {kind})")
        cap = settings.max_photo_bytes
        if response.length is not None and response.length > cap:
            raise _Refused(f"too big ({response.length:,} bytes; data.max_photo_bytes: {cap:,})")
        size = 0
        with open(part, "wb") as out:
            while block := response.read(CHUNK):
                size += len(block)
                if size > cap:
                    raise _Refused(f"too big (over data.max_photo_bytes: {cap:,} bytes)")
                out.write(block)
        if response.length is not None and size < response.length:
            raise ConnectionError(f"cut off at {size:,} of {response.length:,} bytes")


def _transient(exc: BaseException) -> str:
    """Why a request failed in a way a retry may fix."""
    if isinstance(exc, TimeoutError) or "timed out" in str(exc):
        return "timed out"
    reason = getattr(exc, "reason", None) or exc
    return f"cannot connect ({reason})"


def fetch_photo(listed: Listed, store: Path, settings: DataParams) -> Fetched:
    """Fetch one URL into the store (unless it is there), retrying timeouts, dropped
    connections and 5xx/429 answers with back-off; checks the content type, the size and that
    the photo decodes."""
    found = _stored(store, listed.url)
    if found:
        return Fetched(listed, found[0], found[1])
    if urllib.parse.urlsplit(listed.url).scheme not in ("http", "https"):
        return Fetched(listed, reason="not an http(s) URL")
    key = _key(listed.url)
    part = store / f"{key}.part-{os.getpid()}"
    reason = ""
    try:
        for attempt in range(settings.retries + 1):
            if attempt:
                time.sleep(settings.backoff * 2 ** (attempt - 1))
            try:
                _get(listed.url, part, settings)
                break
            except _Refused as exc:
                return Fetched(listed, reason=str(exc))
            except urllib.error.HTTPError as exc:
                reason = f"HTTP {exc.code} {exc.reason}"
                if exc.code not in (408, 429) and exc.code < 500:
                    return Fetched(listed, reason=reason)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = _transient(exc)
        else:
            tries = settings.retries + 1
            return Fetched(listed, reason=f"{reason} ({tries} tries, {settings.timeout:g} s each)")
        check = check_image(part)
        if check.problem:
            return Fetched(listed, reason=check.problem)
        from PIL import Image

        with Image.open(part) as image:
            extension = EXTENSIONS.get(image.format or "", "")
        if not extension:
            return Fetched(listed, reason=f"not a photo format the data set takes ({image.format})")
        photo = store / f"{key}.{extension}"
        digest = hashlib.md5(part.read_bytes()).hexdigest()
        os.replace(part, photo)
        meta = {"url": listed.url, "file": photo.name, "md5": digest}
        with atomic_path(store / f"{key}.json") as temporary:  # written last: the photo is whole
            temporary.write_text(json.dumps(meta))
        return Fetched(listed, photo, digest)
    finally:
        remove(part)


@dataclass(frozen=True)
class Downloaded:
    """What a URL list gave: the photos kept, and every URL that gave none, with why."""

    listed: int
    saved: int
    failures: list[dict[str, str]]


def download_list(path: Path, target: Path, settings: DataParams) -> Downloaded:
    """Fetch every photo of the list at `path` and make `target` the data set folder of
    `<label>/<n>.<ext>` files; photos whose content an earlier URL of the list already gave
    are left out as duplicates. `target` appears only when complete."""
    listed = read_url_list(path)
    store = photo_store()
    store.mkdir(parents=True, exist_ok=True)
    with (
        ThreadPoolExecutor(max_workers=settings.workers) as pool,
        tqdm(total=len(listed), unit="photo", desc="download", mininterval=1) as bar,
    ):

        def one(item: Listed) -> Fetched:
            result = fetch_photo(item, store, settings)
            bar.update(1)
            return result

        results = list(pool.map(one, listed))  # in list order: the first of duplicates wins
    seen: dict[str, str] = {}
    kept: list[Fetched] = []
    failures = []
    for result in results:
        reason = result.reason
        if not reason and result.md5 in seen:
            reason = f"duplicate of {seen[result.md5]}"
        if reason:
            failures.append(
                {
                    "url": redact_url(result.listed.url),
                    "label": result.listed.label,
                    "where": result.listed.where,
                    "reason": reason,
                }
            )
            continue
        seen[result.md5] = redact_url(result.listed.url)
        kept.append(result)
    if not kept:
        example = failures[0]
        raise PetsError(
            f"data.url: no photo could be fetched from the {len(listed)} URLs of {path}; e.g. "
            f"{example['where']}: {example['reason']}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.urls-{os.getpid()}")
    remove(tmp)
    try:
        for result in kept:
            assert result.path is not None  # a kept result has its photo
            name = f"{result.listed.number}{result.path.suffix}"
            destination = tmp / result.listed.label / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(result.path, destination)
            except OSError:  # the store on another disk
                shutil.copyfile(result.path, destination)
        remove(target)
        os.replace(tmp, target)
    finally:
        remove(tmp)
    return Downloaded(len(listed), len(kept), failures)
