"""Stage `download`: the lesson's `untar_data(URLs.PETS)`.

Fetches the archive at `data.url` (http(s), file:// or a path) once, keeping downloads under
~/.cache/pets/archives, verifies `data.md5`, and extracts it into the data set folder, refusing
members that would land outside it. When the archive holds one top-level folder (Pets:
oxford-iiit-pet/), that folder becomes the data set folder.

params: data.url, data.md5
outputs: the data set folder (--dataset) and a manifest (--manifest): archive md5, file count
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pets import paths
from pets.config import Params
from pets.stage import StageSpec, stage_cli

if TYPE_CHECKING:
    from pets.tracking import Tracker


def main(params: Params, *, dataset: Path, manifest: Path, tracker: Tracker | None = None) -> None:
    """Fetch, verify and extract the archive; write the manifest last."""
    from pets.archive import count_files, dataset_manifest, extract, fetch, redact_url
    from pets.files import write_json
    from pets.tracking import Tracker

    tracker = tracker or Tracker()
    fetched = fetch(params.data.url, params.data.md5)
    print(f"extracting {fetched.path} ({fetched.size / 2**20:.1f} MiB, md5 {fetched.md5})")
    top_folder = extract(fetched.path, dataset, params.data)
    files = count_files(dataset)
    write_json(manifest, dataset_manifest(params.data.url, fetched, top_folder, files))
    print(f"{dataset}: {files} files")
    tracker.set_tags({"data.archive_md5": fetched.md5, "data.url": redact_url(params.data.url)})
    tracker.log_metrics({"data_files": files, "archive_bytes": fetched.size})


def archive_sources(params: Params) -> list[Path]:
    """The archive itself when `data.url` is a local file: tracked by its content."""
    from pets.archive import local_path

    path = local_path(params.data.url)
    return [path] if path else []


SPEC = StageSpec(
    name="download",
    params=("data",),
    outputs={"dataset": paths.DATASET, "manifest": paths.MANIFEST},
    folders=frozenset({"dataset"}),
    uncached={"dataset": "the verified archive rebuilds it (800 MB of Pets); DVC only hashes it"},
    threads=1,
    sources=archive_sources,
)


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/download.py --help`."""
    stage_cli(SPEC, main, __doc__, argv)


if __name__ == "__main__":
    cli()
