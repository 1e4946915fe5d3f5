"""`rtmw-edge models ...` commands, the registry's content and the keypoint metadata, against rtmw_facts."""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtmw_edge import zoo
from rtmw_edge.cli import main
from rtmw_edge.downloads import hash_prefix_from_name
from rtmw_edge.errors import RtmwEdgeError, UnknownModelError
from rtmw_edge.keypoints import KEYPOINT_SETS

# rtmw_facts §1.6: flip_indices of COCO-WholeBody, derived from the official `swap` fields (independent truth).
WHOLEBODY_FLIP = [
    0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15, 20, 21, 22, 17, 18, 19, 39, 38, 37, 36, 35, 34, 33,
    32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 50, 51, 52, 53, 58, 57, 56,
    55, 54, 68, 67, 66, 65, 70, 69, 62, 61, 60, 59, 64, 63, 77, 76, 75, 74, 73, 72, 71, 82, 81, 80, 79, 78, 87,
    86, 85, 84, 83, 90, 89, 88,
] + list(range(112, 133)) + list(range(91, 112))
COCO17_FLIP = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]

REQUIRED_MODELS = [
    "rtmw-m-256x192", "rtmw-l-256x192", "rtmw-x-256x192", "rtmw-l-384x288", "rtmw-x-384x288",
    "rtmw3d-l-384x288", "rtmw3d-x-384x288",
    "rtmpose-wb-m-256x192", "rtmpose-wb-l-256x192", "rtmpose-wb-l-384x288",
    "dwpose-t-256x192", "dwpose-s-256x192", "dwpose-m-256x192", "dwpose-l-256x192", "dwpose-l-384x288",
    "rtmpose-t-256x192", "rtmpose-s-256x192", "rtmpose-m-256x192", "rtmpose-l-256x192",
    "rtmdet-nano-person", "rtmdet-m-person",
]

# rtmw_facts §6, strings exactly as they appear in the official sources.
_DL = "https://download.openmmlab.com/mmpose/v1/"
OFFICIAL_URLS = {
    "rtmw-m-256x192": _DL + "projects/rtmw/rtmw-dw-l-m_simcc-cocktail14_270e-256x192-20231122.pth",
    "rtmw-l-256x192": _DL + "projects/rtmw/rtmw-dw-x-l_simcc-cocktail14_270e-256x192-20231122.pth",
    "rtmw-x-256x192": _DL + "projects/rtmw/rtmw-x_simcc-cocktail14_pt-ucoco_270e-256x192-13a2546d_20231208.pth",
    "rtmw-l-384x288": _DL + "projects/rtmw/rtmw-dw-x-l_simcc-cocktail14_270e-384x288-20231122.pth",
    "rtmw-x-384x288": _DL + "projects/rtmw/rtmw-x_simcc-cocktail14_pt-ucoco_270e-384x288-f840f204_20231122.pth",
    "rtmw3d-l-384x288": _DL + "wholebody_3d_keypoint/rtmw3d/rtmw3d-l_8xb64_cocktail14-384x288-794dbc78_20240626.pth",
    "rtmw3d-x-384x288": _DL + "wholebody_3d_keypoint/rtmw3d/rtmw3d-x_8xb64_cocktail14-384x288-b0a0eab7_20240626.pth",
    "dwpose-t-256x192": _DL + "projects/rtmposev1/rtmpose-t_simcc-ucoco_dw-ucoco_270e-256x192-dcf277bf_20230728.pth",
    "dwpose-s-256x192": _DL + "projects/rtmposev1/rtmpose-s_simcc-ucoco_dw-ucoco_270e-256x192-3fd922c8_20230728.pth",
    "dwpose-m-256x192": _DL + "projects/rtmposev1/rtmpose-m_simcc-ucoco_dw-ucoco_270e-256x192-c8b76419_20230728.pth",
    "dwpose-l-256x192": _DL + "projects/rtmposev1/rtmpose-l_simcc-ucoco_dw-ucoco_270e-256x192-4d6dfc62_20230728.pth",
    "dwpose-l-384x288": _DL + "projects/rtmposev1/rtmpose-l_simcc-ucoco_dw-ucoco_270e-384x288-2438fd99_20230728.pth",
    "rtmdet-nano-person": _DL + "projects/rtmpose/rtmdet_nano_8xb32-100e_coco-obj365-person-05d8511e.pth",
    "rtmdet-m-person": _DL + "projects/rtmpose/rtmdet_m_8xb32-100e_coco-obj365-person-235e8209.pth",
}

# rtmw_facts §1.2 (pose: RGB order after BGR→RGB) and §3.8 (RTMDet: BGR, no swap).
POSE_NORM = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "rgb")
DET_NORM = ((103.53, 116.28, 123.675), (57.375, 57.12, 58.395), "bgr")


def single_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr
    return lines[0]


# --------------------------------------------------------------------------------------------- models list / info
def test_models_list_json_names_every_model(capsys):
    assert main(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == zoo.list_models()
    by_name = {r["name"]: r for r in rows}
    assert by_name["rtmw-m-256x192"]["keypoints"] == 133
    assert by_name["rtmw-m-256x192"]["input_size"] == [192, 256]
    assert by_name["rtmpose-t-256x192"]["keypoints"] == 17
    assert by_name["rtmdet-nano-person"]["task"] == "detector"


def test_models_list_json_by_task(capsys):
    assert main(["models", "list", "--task", "pose3d", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["rtmw3d-l-384x288", "rtmw3d-x-384x288"]


def test_models_list_table(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "rtmw-edge models" in out
    assert "rtmdet-nano-person" in out


def test_models_info(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("RTMW_EDGE_HOME", str(tmp_path))
    assert main(["models", "info", "rtmw-m-256x192"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "rtmw-m-256x192"
    assert info["input_size"] == [192, 256]
    assert info["num_keypoints"] == 133
    assert info["flip_indices"] == WHOLEBODY_FLIP
    assert info["checkpoint_url"] == OFFICIAL_URLS["rtmw-m-256x192"]
    assert info["checkpoint_cached"] is None


def test_models_info_unknown_is_one_error_line(capsys):
    assert main(["models", "info", "nosuch"]) == 2  # a usage error
    captured = capsys.readouterr()
    assert "nosuch" in single_error_line(captured.err)
    assert captured.out == ""


def test_console_script_unknown_model(tmp_path):
    script = Path(sys.executable).parent / "rtmw-edge"
    if not script.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    env = dict(os.environ, RTMW_EDGE_HOME=str(tmp_path), NO_COLOR="1")
    proc = subprocess.run([str(script), "models", "info", "rtmw-m-256x19"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = single_error_line(proc.stderr)
    assert "rtmw-m-256x192" in line  # the close name is suggested
    assert proc.stdout == ""


# --------------------------------------------------------------------------------------------- models download
class _Handler(http.server.BaseHTTPRequestHandler):
    payloads: dict[str, bytes] = {}

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = self.payloads.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A local HTTP server on 127.0.0.1: (base URL, path → payload)."""
    handler = type("Handler", (_Handler,), {"payloads": {}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.payloads
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _point_registry_at(monkeypatch, name: str, url: str) -> None:
    spec = zoo._REGISTRY[name]
    monkeypatch.setitem(zoo._REGISTRY, name, dataclasses.replace(spec, checkpoint_url=url, hash_prefix=None))


def test_models_download_into_home(server, monkeypatch, tmp_path, capsys):
    base, payloads = server
    name = "rtmw-m-256x192"
    filename = zoo.get_spec(name).checkpoint_filename  # no hash in this official name
    assert hash_prefix_from_name(filename) is None
    payload = os.urandom(64 * 1024)
    payloads[f"/ckpt/{filename}"] = payload
    _point_registry_at(monkeypatch, name, f"{base}/ckpt/{filename}")
    monkeypatch.setenv("RTMW_EDGE_HOME", str(tmp_path / "home"))

    assert main(["models", "download", name]) == 0
    path = tmp_path / "home" / "checkpoints" / filename
    assert path.read_bytes() == payload
    assert str(path) in capsys.readouterr().out.replace("\n", "")
    # a second call is served from the cache
    payloads.clear()
    assert main(["models", "download", name]) == 0
    assert str(path) in capsys.readouterr().out.replace("\n", "")

    assert main(["models", "info", name]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint_cached"] == str(path)


def test_models_download_404_is_one_error_line(server, monkeypatch, tmp_path, capsys):
    base, _ = server
    name = "rtmw-m-256x192"
    filename = zoo.get_spec(name).checkpoint_filename
    _point_registry_at(monkeypatch, name, f"{base}/missing/{filename}")
    monkeypatch.setenv("RTMW_EDGE_HOME", str(tmp_path / "home"))

    assert main(["models", "download", name]) == 1
    err = capsys.readouterr().err
    # exactly one "error:" line, the last one; a non-TTY progress bar may leave its final frame above it
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err
    assert "Traceback" not in err
    assert "HTTP 404" in errors[0]
    assert not (tmp_path / "home" / "checkpoints" / filename).exists()


# --------------------------------------------------------------------------------------------- keypoints
def test_wholebody_flip_indices_equal_official():
    kps = KEYPOINT_SETS["coco-wholebody"]
    flips = kps.flip_indices
    assert kps.num_keypoints == 133 and len(flips) == 133
    assert flips == WHOLEBODY_FLIP
    assert [flips[f] for f in flips] == list(range(133))  # an involution


def test_coco17_flip_indices():
    kps = KEYPOINT_SETS["coco"]
    assert kps.num_keypoints == 17
    assert kps.flip_indices == COCO17_FLIP
    assert list(kps.names[:17]) == list(KEYPOINT_SETS["coco-wholebody"].names[:17])


def test_wholebody_parts_cover_all_keypoints():
    parts = KEYPOINT_SETS["coco-wholebody"].parts
    assert parts == {"body": (0, 17), "foot": (17, 23), "face": (23, 91), "left_hand": (91, 112),
                     "right_hand": (112, 133)}


# --------------------------------------------------------------------------------------------- registry
def test_registry_holds_every_required_model():
    assert set(REQUIRED_MODELS) <= set(zoo.list_models())
    assert len(zoo.list_models()) == len(set(zoo.list_models()))


@pytest.mark.parametrize("name", zoo.list_models())
def test_hash_prefix_follows_the_file_name(name):
    spec = zoo.get_spec(name)
    assert spec.name == name
    assert spec.hash_prefix == hash_prefix_from_name(spec.checkpoint_filename)
    assert spec.checkpoint_url.startswith("https://download.openmmlab.com/")
    assert spec.checkpoint_url.endswith(".pth")


@pytest.mark.parametrize("name", list(OFFICIAL_URLS))
def test_official_checkpoint_urls(name):
    assert zoo.get_spec(name).checkpoint_url == OFFICIAL_URLS[name]


@pytest.mark.parametrize("name", zoo.list_models())
def test_normalisation_per_task(name):
    spec = zoo.get_spec(name)
    mean, std, color = POSE_NORM if spec.is_pose else DET_NORM
    assert spec.mean == mean and spec.std == std and spec.color == color


@pytest.mark.parametrize("name", zoo.list_models())
def test_keypoint_sets_and_tasks(name):
    spec = zoo.get_spec(name)
    if spec.task == "detector":
        assert spec.num_keypoints == 0 and spec.strides == (8, 16, 32)
    elif spec.name.startswith("rtmpose-") and not spec.name.startswith("rtmpose-wb-"):
        assert spec.keypoint_set == "coco" and spec.num_keypoints == 17
    else:
        assert spec.keypoint_set == "coco-wholebody" and spec.num_keypoints == 133
    assert (spec.task == "pose3d") == spec.name.startswith("rtmw3d-")


def test_unknown_model_suggests_close_name():
    with pytest.raises(UnknownModelError) as info:
        zoo.get_spec("rtmw-m-256x19")
    assert isinstance(info.value, RtmwEdgeError) and isinstance(info.value, KeyError)
    assert "rtmw-m-256x192" in str(info.value)
    assert str(info.value).startswith("unknown model 'rtmw-m-256x19'")
