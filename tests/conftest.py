"""Shared test settings: where the shared reference files live, and small fixtures around them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

# /work/shared next to the checkout: official key lists, reference facts, real detector weights and photos.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def coco_persons(ann_path: Path) -> dict[str, list[dict]]:
    """The ground-truth persons of a COCO keypoint file, by photo file name: the non-crowd person annotations
    with at least one labelled keypoint (the rule every test that counts or matches persons uses). A photo
    without such persons maps to an empty list."""
    data = json.loads(Path(ann_path).read_text())
    names = {im["id"]: im["file_name"] for im in data["images"]}
    persons: dict[str, list[dict]] = {name: [] for name in names.values()}
    for ann in data["annotations"]:
        if ann.get("category_id", 1) == 1 and not ann.get("iscrowd", 0) and ann.get("num_keypoints", 0) > 0:
            persons[names[ann["image_id"]]].append(ann)
    return persons


def xyxy(persons: list[dict]) -> np.ndarray:
    """Their COCO [x, y, w, h] boxes as an (n, 4) float32 array of [x1, y1, x2, y2]."""
    return np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in persons)], np.float32).reshape(-1, 4)


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
