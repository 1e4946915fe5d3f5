"""Shared test settings: where the shared reference files live, and small fixtures around them."""

from __future__ import annotations

from pathlib import Path

import pytest

# /work/shared next to the checkout: official key lists, reference facts, real detector weights and photos.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared folder; tests that need it are skipped where a checkout has none."""
    if not SHARED.is_dir():
        pytest.skip(f"shared reference folder not found: {SHARED}")
    return SHARED


@pytest.fixture
def shared_file(shared: Path):
    """Path of a file under shared/, skipping the test where it is absent."""

    def get(relative: str) -> Path:
        path = shared / relative
        if not path.is_file():
            pytest.skip(f"shared file not found: {path}")
        return path

    return get


@pytest.fixture(scope="session")
def random_export(tmp_path_factory):
    """export(name, **options) → the path of a random-weight export of a registered model, made once per session
    for each (name, options) and shared by every test that asks for the same one."""
    from rtmw_edge.export import export_onnx

    made: dict = {}
    folder = tmp_path_factory.mktemp("exports")

    def export(name: str, **options) -> Path:
        key = (name, tuple(sorted(options.items())))
        if key not in made:
            tag = "-".join(f"{k}{v}" for k, v in sorted(options.items()))
            made[key] = export_onnx(name, folder / f"{name}{'-' + tag if tag else ''}.onnx", random_init=True,
                                    progress=False, **options)
        return made[key]

    return export
