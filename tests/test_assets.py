"""Split-zip model assets: reassembled, checked by sha256, unpacked once, never half-visible."""

import hashlib
import importlib.util
import io
import multiprocessing
import zipfile
from pathlib import Path

import pytest

from distill.assets import ASSETS, AssetError, SplitZipAsset, asset_folder, unpack_asset

FILES = {"tiny-model/config.json": b'{"model_type": "bert"}', "tiny-model/vocab.txt": b"a\nb\n"}


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name, data in files.items():
            zipped.writestr(name, data)
        zipped.writestr("tiny-model/desktop.ini", b"[.ShellClassInfo]")
    return buffer.getvalue()


def install_parts(site: Path, tag: str, data: bytes, parts: int = 3) -> tuple[str, ...]:
    """Fake packages `<tag>-part_00k/input/tiny.zip.00k` holding `data` split in `parts`."""
    size = -(-len(data) // parts)
    modules = []
    for k in range(1, parts + 1):
        module = f"{tag}-part_{k:03d}"
        folder = site / module / "input"
        folder.mkdir(parents=True)
        (site / module / "__init__.py").write_text("")
        (folder / f"tiny.zip.{k:03d}").write_bytes(data[(k - 1) * size : k * size])
        modules.append(module)
    return tuple(modules)


def make_asset(site: Path, tag: str, data: bytes, sha256: str | None = None) -> SplitZipAsset:
    return SplitZipAsset(
        name=tag,
        modules=install_parts(site, tag, data),
        part_file="input/tiny.zip.{k:03d}",
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        folder="tiny-model",
        make_target="setup-tiny",
    )


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def test_parts_are_reassembled_checked_and_unpacked_without_desktop_ini(site, tmp_path):
    asset = make_asset(site, "good", zip_bytes(FILES))
    root = tmp_path / "cache"
    first = unpack_asset(asset, root)
    assert first.path == root / f"good-{asset.sha256[:12]}"
    assert not first.reused
    for name, data in FILES.items():
        assert (first.path / name).read_bytes() == data
    assert not (first.path / "tiny-model" / "desktop.ini").exists()
    assert not list(first.path.glob("*.zip"))  # the reassembled archive is not kept
    assert first.manifest.sha256 == asset.sha256
    assert unpack_asset(asset, root).reused  # second use: nothing rebuilt
    assert leftovers(root) == [first.path.name]


def test_checksum_mismatch_is_refused_and_leaves_nothing(site, tmp_path):
    asset = make_asset(site, "tampered", zip_bytes(FILES), sha256="0" * 64)
    root = tmp_path / "cache"
    with pytest.raises(AssetError, match="sha256 .* expected 0000.*make setup-tiny"):
        unpack_asset(asset, root)
    assert leftovers(root) == []


def test_a_failed_unpack_is_never_visible(site, tmp_path):
    # Right checksum, broken archive: the build fails half way and must leave no folder behind.
    data = zip_bytes(FILES)
    broken = data[: len(data) // 2] + b"\0" * (len(data) - len(data) // 2)
    asset = make_asset(site, "broken", broken)
    root = tmp_path / "cache"
    with pytest.raises(AssetError, match="not a usable zip"):
        unpack_asset(asset, root)
    assert leftovers(root) == []


def test_a_missing_part_names_the_make_target(site, tmp_path):
    asset = make_asset(site, "partial", zip_bytes(FILES))
    missing = site / asset.modules[1]
    for path in sorted(missing.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    missing.rmdir()
    importlib.invalidate_caches()
    with pytest.raises(AssetError, match=r"partial-part-002.*make setup-tiny"):
        unpack_asset(asset, tmp_path / "cache")


def _unpack_in_child(asset, root, barrier, results):
    barrier.wait()  # start together: every process finds no finished folder
    results.put(unpack_asset(asset, root).reused)


def test_concurrent_first_use_builds_once(site, tmp_path):
    asset = make_asset(site, "racy", zip_bytes(FILES))
    root = tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(3), context.Queue()
    children = [
        context.Process(target=_unpack_in_child, args=(asset, root, barrier, results))
        for _ in range(3)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    reused = sorted(results.get(timeout=5) for _ in children)
    assert reused == [False, True, True]  # one built, two waited and reused its folder
    assert leftovers(root) == [f"racy-{asset.sha256[:12]}"]


def test_cache_root_follows_the_environment(site, tmp_path, monkeypatch):
    asset = make_asset(site, "envy", zip_bytes(FILES))
    monkeypatch.setitem(ASSETS, "envy", asset)
    monkeypatch.setenv("DISTILLERY_ASSETS", str(tmp_path / "elsewhere"))
    folder = asset_folder("envy")
    assert folder == tmp_path / "elsewhere" / f"envy-{asset.sha256[:12]}" / "tiny-model"
    assert (folder / "config.json").is_file()


MPNET_INSTALLED = all(importlib.util.find_spec(m) is not None for m in ASSETS["mpnet"].modules)


@pytest.mark.skipif(not MPNET_INSTALLED, reason="MPNet parts not installed (make setup-mpnet)")
def test_bundled_mpnet_resolves_to_a_folder_autoconfig_loads():
    from transformers import AutoConfig

    from distill.models import resolve_model_source

    config = AutoConfig.from_pretrained(resolve_model_source("mpnet"))
    assert config.model_type == "mpnet"
    assert config.num_hidden_layers == 12 and config.hidden_size == 768
