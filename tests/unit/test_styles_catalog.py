"""styles/catalog.py: one scan of a styles folder of real files, offering the good styles, refusing the
bad ones with their reason, and skipping the styles made for other models."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from noisett_mcp.config import Settings
from noisett_mcp.styles.catalog import CatalogView, StyleCatalog
from noisett_mcp.styles.manifest import DEMO_STYLES_DIR

GOOD = """\
name = "{name}"
title = "Brand"
description = "The brand's look."
weights = "{name}.safetensors"
base_models = [{models}]
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    styles = tmp_path / "styles"
    styles.mkdir()
    return styles


@pytest.fixture
def scan(folder: Path, make_settings: Callable[..., Settings]) -> Callable[[], CatalogView]:
    catalog = StyleCatalog(make_settings(), folder)  # the demo model, this folder only
    return catalog.refresh


def add(folder: Path, name: str, text: str | None = None, *, models: str = '"demo"') -> Path:
    """A manifest, with a real adapter (a demo style's) beside it."""
    shutil.copyfile(DEMO_STYLES_DIR / "demo-flat.safetensors", folder / f"{name}.safetensors")
    path = folder / f"{name}.toml"
    path.write_text(GOOD.format(name=name, models=models) if text is None else text, encoding="utf-8")
    return path


def reasons(view: CatalogView) -> dict[str, str]:
    return {refusal.source.stem: refusal.reason for refusal in view.refused}


def test_a_good_manifest_is_offered_with_its_adapter(folder: Path, scan: Callable[[], CatalogView]) -> None:
    add(folder, "brand")
    view = scan()
    assert view.names() == ["none", "brand"]
    style = view.resolve("brand")
    assert style is not None and style.weights_file == (folder / "brand.safetensors").resolve()
    assert style.sha256 is not None and len(style.sha256) == 64 and style.modules
    assert view.resolve("none") is None  # the base model


def test_each_bad_manifest_is_refused_with_its_reason(folder: Path, scan: Callable[[], CatalogView]) -> None:
    add(folder, "ok")
    add(folder, "broken", "name = [unclosed")
    add(folder, "invalid", GOOD.format(name="invalid", models='"demo"') + "strength = 9\n")
    add(folder, "misnamed", GOOD.format(name="other", models='"demo"'))
    add(folder, "deep", "x = " + "[" * 5000 + "]" * 5000)
    (folder / "lost.toml").write_text(GOOD.format(name="lost", models='"demo"'), encoding="utf-8")
    view = scan()
    assert list(view.styles) == ["ok"], "one bad file never takes the others down"
    said = reasons(view)
    assert said["broken"].startswith("malformed TOML (")
    assert said["invalid"].startswith("invalid manifest (strength: ")
    assert said["misnamed"] == "name 'other' must match the file name 'misnamed'"
    assert said["deep"].startswith(
        ("malformed TOML (nested too deeply", "invalid manifest (nested too deeply")
    )
    assert said["lost"] == "weights file 'lost.safetensors' not found next to the manifest"


def test_a_style_for_other_models_is_skipped_not_refused(
    folder: Path, scan: Callable[[], CatalogView]
) -> None:
    add(folder, "for-hidream", models='"HiDream-ai/HiDream-I1-*"')
    view = scan()
    assert not view.refused and list(view.styles) == []
    assert [(s.name, s.base_models) for s in view.skipped] == [("for-hidream", ("HiDream-ai/HiDream-I1-*",))]
    with pytest.raises(
        LookupError, match="'for-hidream' is made for HiDream-ai/HiDream-I1-\\*, not this model"
    ):
        view.resolve("for-hidream")


def test_resolve_says_what_is_available(folder: Path, scan: Callable[[], CatalogView]) -> None:
    add(folder, "brand")
    add(folder, "broken", "name = [unclosed")
    view = scan()
    with pytest.raises(LookupError, match=r"^unknown style 'nope'; available styles: none, brand$"):
        view.resolve("nope")
    with pytest.raises(LookupError, match=r"^style 'broken' is refused \(malformed TOML"):
        view.resolve("broken")


def test_a_changed_manifest_is_read_again_and_a_removed_one_is_gone(
    folder: Path, scan: Callable[[], CatalogView]
) -> None:
    path = add(folder, "brand")
    assert scan().styles["brand"].manifest.title == "Brand"
    path.write_text(
        GOOD.format(name="brand", models='"demo"').replace('"Brand"', '"Brand, new"'), encoding="utf-8"
    )
    assert scan().styles["brand"].manifest.title == "Brand, new"
    path.unlink()
    assert scan().names() == ["none"]
