"""Every CLI command × every class of bad input: the exit code, exactly one `error:` line on stderr, no
traceback, no file left behind, and the inputs byte-identical afterwards (issue 13).

Exit codes: 2 for usage errors found before any work (option values, output paths, unknown model names),
1 for errors met while working (missing, empty, truncated or wrong files). A new command joins by adding
rows to MATRIX; a class that cannot apply to a command (it reads no such file, writes no output) is listed
in NOT_APPLICABLE with the reason, so the table stays complete.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from rtmw_edge.cli import main

CLASSES = ("missing file", "empty file", "truncated file", "wrong kind of model", "directory instead of file",
           "unwritable output", "output = input", "non-existent model name", "invalid option value")

UNWRITABLE = "/proc/rtmw-edge-matrix/out"  # no one can create files under /proc, root included
BENCH = ["bench", "--images", "{images}"]  # the people bench tiles: the detector finds them in the photos

# (command, class) → (argv with {placeholders}, exit code, a piece of the error line)
MATRIX: dict[tuple[str, str], tuple[list[str], int, str]] = {
    # run SOURCE --det --pose --out
    ("run", "missing file"): (["run", "{missing}.jpg", "--det", "{det}", "--pose", "{pose}", "--out", "{out}.jsonl"],
                              1, "no such file"),
    ("run", "empty file"): (["run", "{empty}.jpg", "--det", "{det}", "--pose", "{pose}", "--out", "{out}.jsonl"],
                            1, "empty file"),
    ("run", "truncated file"): (["run", "{truncated}.jpg", "--det", "{det}", "--pose", "{pose}"], 1, "truncated"),
    ("run", "wrong kind of model"): (["run", "{img}", "--det", "{det}", "--pose", "{det}", "--out", "{out}.jsonl"],
                                     1, "not a pose model"),
    ("run", "directory instead of file"): (["run", "{img}", "--det", "{det}", "--pose", "{dir}"], 1, "is a folder"),
    ("run", "unwritable output"): (["run", "{img}", "--det", "{det}", "--pose", "{pose}", "--out",
                                    UNWRITABLE + ".jsonl"], 2, "cannot create files in /proc"),
    ("run", "output = input"): (["run", "{img}", "--det", "{det}", "--pose", "{pose}", "--save", "{img}"], 2,
                                "is an input of this command"),
    ("run", "non-existent model name"): (["run", "{img}", "--det", "{det}", "--pose", "rtmw-q-256x192"], 2,
                                         "rtmw-q-256x192"),
    ("run", "invalid option value"): (["run", "{img}", "--det", "{det}", "--pose", "{pose}",
                                       "--smooth-min-cutoff", "-1"], 2, "--smooth-min-cutoff must be > 0"),
    # export NAME --checkpoint -o
    ("export", "missing file"): (["export", "rtmpose-t-256x192", "--checkpoint", "{missing}.pth", "-o",
                                  "{out}.onnx"], 1, "not found"),
    ("export", "empty file"): (["export", "rtmpose-t-256x192", "--checkpoint", "{empty}.pth", "-o", "{out}.onnx"],
                               1, "not a PyTorch checkpoint"),
    ("export", "truncated file"): (["export", "rtmpose-t-256x192", "--checkpoint", "{truncated}.pth", "-o",
                                    "{out}.onnx"], 1, "not a readable PyTorch checkpoint"),
    ("export", "wrong kind of model"): (["export", "rtmpose-t-256x192", "--checkpoint", "{det_ckpt}", "-o",
                                         "{out}.onnx"], 1, "does not fit rtmpose-t-256x192"),
    ("export", "directory instead of file"): (["export", "rtmpose-t-256x192", "--checkpoint", "{dir}", "-o",
                                               "{out}.onnx"], 1, "is a folder"),
    ("export", "unwritable output"): (["export", "rtmpose-t-256x192", "--random-init", "-o", UNWRITABLE + ".onnx"],
                                      2, "cannot create files in /proc"),
    ("export", "output = input"): (["export", "rtmpose-t-256x192", "--checkpoint", "{pose_ckpt}", "-o",
                                    "{pose_ckpt}"], 2, "is an input of this command"),
    ("export", "non-existent model name"): (["export", "rtmw-q-256x192", "--random-init", "-o", "{out}.onnx"], 2,
                                            "rtmw-q-256x192"),
    ("export", "invalid option value"): (["export", "rtmpose-t-256x192", "--random-init", "--opset", "9", "-o",
                                          "{out}.onnx"], 2, "opset 9 is too old"),
    # check CANDIDATE --against --images --json
    ("check", "missing file"): (["check", "{missing}.onnx", "--against", "{pose}", "--images", "{img}"], 1,
                                "not found"),
    ("check", "empty file"): (["check", "{empty}.onnx", "--against", "{pose}", "--images", "{img}"], 1,
                              "not a readable ONNX"),
    ("check", "truncated file"): (["check", "{truncated}.onnx", "--against", "{pose}", "--images", "{img}"], 1,
                                  "not a readable ONNX"),
    ("check", "wrong kind of model"): (["check", "{pose}", "--against", "{det}", "--images", "{img}"], 1,
                                       "does not describe the same model"),
    ("check", "directory instead of file"): (["check", "{dir}", "--against", "{pose}", "--images", "{img}"], 1,
                                             "is a folder"),
    ("check", "unwritable output"): (["check", "{pose}", "--against", "{pose}", "--images", "{img}", "--json",
                                      UNWRITABLE + ".json"], 2, "cannot create files in /proc"),
    ("check", "output = input"): (["check", "{pose}", "--against", "{pose}", "--images", "{img}", "--json",
                                   "{pose}"], 2, "is an input of this command"),
    ("check", "non-existent model name"): (["check", "{pose}", "--against", "rtmw-q-256x192", "--images", "{img}"],
                                           2, "rtmw-q-256x192"),
    ("check", "invalid option value"): (["check", "{pose}", "--against", "{pose}", "--images", "{img}",
                                         "--max-samples", "0"], 2, "--max-samples must be at least 1"),
    # eval --ann (--predictions | --pose --images --gt-boxes) --out
    ("eval", "missing file"): (["eval", "--ann", "{missing}.json", "--predictions", "{preds}"], 1, "not found"),
    ("eval", "empty file"): (["eval", "--ann", "{empty}.json", "--predictions", "{preds}"], 1, "not valid JSON"),
    ("eval", "truncated file"): (["eval", "--ann", "{truncated}.json", "--predictions", "{preds}"], 1,
                                 "not valid JSON"),
    ("eval", "wrong kind of model"): (["eval", "--ann", "{ann}", "--images", "{images}", "--pose", "{det}",
                                       "--gt-boxes"], 1, "not a pose model"),
    ("eval", "directory instead of file"): (["eval", "--ann", "{dir}", "--predictions", "{preds}"], 1,
                                            "is a folder"),
    ("eval", "unwritable output"): (["eval", "--ann", "{ann}", "--predictions", "{preds}", "--out",
                                     UNWRITABLE + ".json"], 2, "cannot create files in /proc"),
    ("eval", "output = input"): (["eval", "--ann", "{ann}", "--predictions", "{preds}", "--out", "{preds}"], 2,
                                 "is an input of this command"),
    ("eval", "non-existent model name"): (["eval", "--ann", "{ann}", "--images", "{images}", "--pose",
                                           "rtmw-q-256x192", "--gt-boxes"], 2, "rtmw-q-256x192"),
    ("eval", "invalid option value"): (["eval", "--ann", "{ann}", "--predictions", "{preds}", "--gt-boxes"], 2,
                                       "drop --gt-boxes"),
    # bench --det --pose --ann --images --out (the people to tile: found in --images)
    ("bench", "missing file"): ([*BENCH, "--det", "{det}", "--pose", "{missing}.onnx", "--persons", "1",
                                 "--frames", "1"], 1, "not found"),
    ("bench", "empty file"): ([*BENCH, "--det", "{det}", "--pose", "{empty}.onnx", "--persons", "1", "--frames",
                               "1"], 1, "{empty}.onnx"),
    ("bench", "truncated file"): ([*BENCH, "--det", "{det}", "--pose", "{truncated}.onnx", "--persons", "1",
                                   "--frames", "1"], 1, "{truncated}.onnx"),
    ("bench", "wrong kind of model"): ([*BENCH, "--det", "{pose}", "--pose", "{pose}", "--persons", "1",
                                        "--frames", "1"], 1, "pose model"),
    ("bench", "directory instead of file"): ([*BENCH, "--det", "{det}", "--pose", "{dir}", "--persons", "1",
                                              "--frames", "1"], 1, "is a folder"),
    ("bench", "unwritable output"): ([*BENCH, "--det", "{det}", "--pose", "{pose}", "--out",
                                      UNWRITABLE + ".json"], 2, "cannot create files in /proc"),
    ("bench", "output = input"): ([*BENCH, "--det", "{det}", "--pose", "{pose}", "--out", "{pose}"], 2,
                                  "is an input of this command"),
    ("bench", "non-existent model name"): ([*BENCH, "--det", "{det}", "--pose", "rtmw-q-256x192", "--persons",
                                            "1", "--frames", "1"], 2, "rtmw-q-256x192"),
    ("bench", "invalid option value"): ([*BENCH, "--det", "{det}", "--pose", "{pose}", "--persons",
                                         "0"], 2,
                                        "--persons values and --frames must be at least 1"),
    # calibrate MODEL -o --images
    ("calibrate", "missing file"): (["calibrate", "{missing}.onnx", "-o", "{out}.onnx", "--images", "{images}"], 1,
                                    "not found"),
    ("calibrate", "empty file"): (["calibrate", "{empty}.onnx", "-o", "{out}.onnx", "--images", "{images}"], 1,
                                  "not a readable ONNX"),
    ("calibrate", "truncated file"): (["calibrate", "{truncated}.onnx", "-o", "{out}.onnx", "--images", "{images}"],
                                      1, "not a readable ONNX"),
    ("calibrate", "wrong kind of model"): (["calibrate", "{relu}", "-o", "{out}.onnx", "--images", "{images}"], 1,
                                           "neither a person detector nor a SimCC pose model"),
    ("calibrate", "directory instead of file"): (["calibrate", "{dir}", "-o", "{out}.onnx", "--images",
                                                  "{images}"], 1, "is a folder"),
    ("calibrate", "unwritable output"): (["calibrate", "{det}", "-o", UNWRITABLE + ".onnx", "--images", "{images}"],
                                         2, "cannot create files in /proc"),
    ("calibrate", "output = input"): (["calibrate", "{det}", "-o", "{det}", "--images", "{images}"], 2,
                                      "is an input of this command"),
    ("calibrate", "invalid option value"): (["calibrate", "{det}", "-o", "{out}.onnx", "--images", "{images}",
                                             "--method", "kl"], 2, "--method must be one of"),
    # build ONNX -o
    ("build", "missing file"): (["build", "{missing}.onnx", "-o", "{out}.engine"], 1, "not found"),
    ("build", "empty file"): (["build", "{empty}.onnx", "-o", "{out}.engine"], 1, "not a readable ONNX"),
    ("build", "truncated file"): (["build", "{truncated}.onnx", "-o", "{out}.engine"], 1, "not a readable ONNX"),
    ("build", "directory instead of file"): (["build", "{dir}", "-o", "{out}.engine"], 1, "is a folder"),
    ("build", "unwritable output"): (["build", "{pose}", "-o", UNWRITABLE + ".engine"], 2,
                                     "cannot create files in /proc"),
    ("build", "output = input"): (["build", "{pose}", "-o", "{pose}"], 2, "is an input of this command"),
    ("build", "invalid option value"): (["build", "{pose}", "-o", "{out}.engine", "--batch", "8:1:32"], 2,
                                        "needs 1 <= MIN <= OPT <= MAX"),
    # models import FILE --spec -o (a foreign pose ONNX → a copy with metadata)
    ("models import", "missing file"): (["models", "import", "{missing}.onnx", "--spec", "rtmpose-t-256x192", "-o",
                                         "{out}.onnx"], 1, "not found"),
    ("models import", "empty file"): (["models", "import", "{empty}.onnx", "--spec", "rtmpose-t-256x192", "-o",
                                       "{out}.onnx"], 1, "not a readable ONNX"),
    ("models import", "truncated file"): (["models", "import", "{truncated}.onnx", "--spec", "rtmpose-t-256x192",
                                           "-o", "{out}.onnx"], 1, "not a readable ONNX"),
    ("models import", "wrong kind of model"): (["models", "import", "{det}", "--spec", "rtmpose-t-256x192", "-o",
                                                "{out}.onnx"], 1, "not a pose model"),
    ("models import", "directory instead of file"): (["models", "import", "{dir}", "--spec", "rtmpose-t-256x192",
                                                      "-o", "{out}.onnx"], 1, "is a folder"),
    ("models import", "unwritable output"): (["models", "import", "{foreign}", "--spec", "rtmpose-t-256x192", "-o",
                                              UNWRITABLE + ".onnx"], 2, "cannot create files in /proc"),
    ("models import", "output = input"): (["models", "import", "{foreign}", "--spec", "rtmpose-t-256x192", "-o",
                                           "{foreign}"], 2, "is an input of this command"),
    ("models import", "non-existent model name"): (["models", "import", "{foreign}", "--spec", "rtmw-q-256x192", "-o",
                                                    "{out}.onnx"], 2, "rtmw-q-256x192"),
    ("models import", "invalid option value"): (["models", "import", "{foreign}", "--spec", "rtmdet-nano-person",
                                                 "-o", "{out}.onnx"], 2, "rtmdet-nano-person is a detector"),
    # models list | info | download
    ("models list", "invalid option value"): (["models", "list", "--task", "segmentation"], 2,
                                              "--task must be one of"),
    ("models info", "non-existent model name"): (["models", "info", "rtmw-q-256x192"], 2, "rtmw-q-256x192"),
    ("models download", "non-existent model name"): (["models", "download", "rtmw-q-256x192"], 2,
                                                     "rtmw-q-256x192"),
    ("models download", "directory instead of file"): (["models", "download", "rtmpose-t-256x192", "--dir",
                                                        "{pose}"], 2, "is a file; give a folder"),
    ("models download", "unwritable output"): (["models", "download", "rtmpose-t-256x192", "--dir", UNWRITABLE], 2,
                                               "cannot create files in /proc"),
    ("models download", "invalid option value"): (["models", "download", "rtmpose-t-256x192", "--sha256", "xyz"], 2,
                                                  "invalid sha256"),
    # selftest (writes a work folder; TensorRT is absent here, so every check must come before that)
    ("selftest", "missing file"): (["selftest", "--images", "{missing}.jpg"], 1, "no such image file or folder"),
    ("selftest", "empty file"): (["selftest", "--images", "{empty}.jpg"], 1, "empty file"),
    ("selftest", "truncated file"): (["selftest", "--images", "{truncated}.jpg"], 1, "truncated JPEG"),
    ("selftest", "unwritable output"): (["selftest", "--workdir", UNWRITABLE], 2, "cannot create files in /proc"),
    ("selftest", "output = input"): (["selftest", "--workdir", "{images}", "--images", "{images}"], 2,
                                     "is an input of this command"),
    # triton export --det --pose -o REPO (writes a folder) | serve --repository (reads one) | setup
    ("triton export", "missing file"): (["triton", "export", "--det", "{missing}.onnx", "--pose", "{pose}", "-o",
                                         "{out}_repo"], 1, "not found"),
    ("triton export", "empty file"): (["triton", "export", "--det", "{det}", "--pose", "{empty}.onnx", "-o",
                                       "{out}_repo"], 1, "not a readable ONNX"),
    ("triton export", "truncated file"): (["triton", "export", "--det", "{det}", "--pose", "{truncated}.onnx", "-o",
                                           "{out}_repo"], 1, "not a readable ONNX"),
    ("triton export", "wrong kind of model"): (["triton", "export", "--det", "{pose}", "--pose", "{pose}", "-o",
                                                "{out}_repo"], 1, "this is a pose model"),
    ("triton export", "directory instead of file"): (["triton", "export", "--det", "{det}", "--pose", "{dir}", "-o",
                                                      "{out}_repo"], 1, "is a folder"),
    ("triton export", "unwritable output"): (["triton", "export", "--det", "{det}", "--pose", "{pose}", "-o",
                                              UNWRITABLE], 2, "cannot create files in /proc"),
    ("triton export", "output = input"): (["triton", "export", "--det", "{det}", "--pose", "{pose}", "-o",
                                           "{root}", "--force"], 2, "holds the input"),
    ("triton export", "non-existent model name"): (["triton", "export", "--det", "{det}", "--pose",
                                                    "rtmw-q-256x192", "-o", "{out}_repo"], 2, "rtmw-q-256x192"),
    ("triton export", "invalid option value"): (["triton", "export", "--det", "{det}", "--pose", "{pose}", "-o",
                                                 "{out}_repo", "--pose-batch", "8:1:32"], 2, "--pose-batch"),
    ("triton serve", "missing file"): (["triton", "serve", "--repository", "{missing}"], 1, "folder not found"),
    ("triton serve", "wrong kind of model"): (["triton", "serve", "--repository", "{images}"], 1,
                                              "no model folders with a config.pbtxt"),
    ("triton serve", "directory instead of file"): (["triton", "serve", "--repository", "{pose}"], 1,
                                                    "not a folder"),
    ("triton serve", "unwritable output"): (["triton", "serve", "--repository", "{dir}", "--log", UNWRITABLE], 2,
                                            "cannot create files in /proc"),
    ("triton serve", "output = input"): (["triton", "serve", "--repository", "{root}", "--log", "{pose}"], 2,
                                         "inside the input folder"),
    ("triton serve", "invalid option value"): (["triton", "serve", "--repository", "{dir}", "--grpc-port",
                                                "70000"], 2, "ports must be in 0..65535"),
    ("triton setup", "missing file"): (["triton", "setup", "--python", "{missing}"], 1, "not found"),
    # serve --config TOML (models and cameras come from the file; the daemon writes no file: logs go to stderr)
    ("serve", "missing file"): (["serve", "--config", "{root}/serve_missing_pose.toml"], 1,
                                "pose model file not found"),
    ("serve", "empty file"): (["serve", "--config", "{root}/serve_empty_pose.toml"], 1, "not a readable ONNX"),
    ("serve", "truncated file"): (["serve", "--config", "{root}/serve_truncated_pose.toml"], 1,
                                  "not a readable ONNX"),
    ("serve", "wrong kind of model"): (["serve", "--config", "{root}/serve_det_as_pose.toml"], 1,
                                       "not a pose model"),
    ("serve", "directory instead of file"): (["serve", "--config", "{root}/serve_folder_as_pose.toml"], 1,
                                             "is a folder without mmdeploy SDK JSON"),
    ("serve", "config is a folder"): (["serve", "--config", "{dir}"], 2, "is a folder, not a configuration"),
    ("serve", "non-existent model name"): (["serve", "--config", "{root}/serve_unknown_name.toml"], 2,
                                           "rtmw-q-256x192"),
    ("serve", "invalid option value"): (["serve", "--config", "{root}/serve_bad_value.toml"], 2,
                                        "server.heartbeat_s must be"),
    ("serve", "missing config"): (["serve", "--config", "{missing}.toml"], 2, "configuration file not found"),
    ("serve", "truncated config"): (["serve", "--config", "{root}/serve_truncated.toml"], 2, "invalid TOML"),
    ("serve", "check: unknown name"): (["serve", "--check", "--config", "{root}/serve_unknown_name.toml"], 2,
                                       "rtmw-q-256x192"),
    # any command: usage errors typer finds
    ("run", "unknown option"): (["run", "{img}", "--no-such-option"], 2, "No such option"),
}

NOT_APPLICABLE = {
    ("calibrate", "non-existent model name"): "calibrate takes ONNX files only",
    ("build", "wrong kind of model"): "any ONNX graph can be built; the engine's use decides",
    ("build", "non-existent model name"): "build takes ONNX files only",
    ("models list", "*"): "reads and writes no file; --task is its only value",
    ("models info", "*"): "reads and writes no file",
    ("models download", "missing file"): "reads no local file",
    ("models download", "empty file"): "reads no local file",
    ("models download", "truncated file"): "reads no local file (a truncated download is resumed and hash-checked: "
                                           "tests/test_downloads.py)",
    ("models download", "wrong kind of model"): "the name picks the file",
    ("models download", "output = input"): "reads no local file",
    ("serve", "unwritable output"): "writes no file: logs go to stderr (journald), results to its clients",
    ("serve", "output = input"): "writes no file: logs go to stderr (journald), results to its clients",
    ("doctor", "*"): "reports the machine, reads and writes no user file, always exits 0",
    ("triton serve", "empty file"): "reads a folder; tritonserver reports a broken model config itself "
                                    "(tests/test_triton.py)",
    ("triton serve", "truncated file"): "reads a folder; model files are loaded by tritonserver, which names the model "
                                        "(tests/test_triton.py)",
    ("triton serve", "non-existent model name"): "serves what the repository holds; takes no model names",
    ("triton setup", "*"): "builds the cached server venv; its one input is --python (a missing one: MATRIX)",
    ("selftest", "wrong kind of model"): "exports its own models",
    ("selftest", "directory instead of file"): "--images takes a photo or a folder of photos",
    ("selftest", "non-existent model name"): "exports its own models",
    ("selftest", "invalid option value"): "its options are paths only",
}


def test_the_table_covers_every_command_and_class():
    from rtmw_edge.cli import app

    commands = {c.name for c in app.registered_commands} | {f"{g.name} {c.name}" for g in app.registered_groups
                                                            for c in g.typer_instance.registered_commands}
    # serve: its config's other bad values have their own tables (tests/test_serve_unit.py, test_serve_hygiene.py)
    for command in commands:
        for cls in CLASSES:
            known = ((command, cls) in MATRIX or (command, cls) in NOT_APPLICABLE
                     or (command, "*") in NOT_APPLICABLE)
            assert known, f"no row for {command} × {cls}: add one to MATRIX or NOT_APPLICABLE"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory, shared):
    import onnx
    import torch
    from onnx import TensorProto, helper

    from rtmw_edge.export import export_onnx
    from rtmw_edge.models import create_model
    from rtmw_edge.models.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("matrix")
    images = root / "images"
    images.mkdir()
    for photo in (shared / "images").glob("0*.jpg"):  # the annotation's four photos
        (images / photo.name).write_bytes(photo.read_bytes())
    torch.manual_seed(0)
    pose_ckpt = save_checkpoint(create_model("rtmpose-t-256x192"), root / "pose.pth")
    pose = export_onnx("rtmpose-t-256x192", root / "pose.onnx", checkpoint=pose_ckpt, progress=False)
    det_ckpt = save_checkpoint(create_model("rtmdet-nano-person"), root / "det.pth")
    det = root / "det.onnx"
    det.write_bytes((shared / "models" / "rtmdet-nano_person_320_rawhead.onnx").read_bytes())
    ann = root / "ann.json"
    ann.write_bytes((shared / "images" / "test_coco_wholebody.json").read_bytes())
    preds = root / "preds.json"
    preds.write_text("[]")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    relu = root / "relu.onnx"
    onnx.save(helper.make_model(graph), str(relu))
    (root / "a_folder").mkdir()
    serve = {"missing_pose": f'pose = "{root}/missing.onnx"', "empty_pose": f'pose = "{root}/empty.onnx"',
             "truncated_pose": f'pose = "{root}/truncated.onnx"', "det_as_pose": f'pose = "{det}"',
             "unknown_name": 'pose = "rtmw-q-256x192"', "bad_value": f'pose = "{pose}"',
             "folder_as_pose": f'pose = "{root / "a_folder"}"'}
    for name, line in serve.items():
        heartbeat = "heartbeat_s = -1\n" if name == "bad_value" else ""
        (root / f"serve_{name}.toml").write_text(
            f'[server]\nport = 0\n{heartbeat}[model]\ndet = "{det}"\n{line}\n'
            f'[cameras.door]\nsource = "{images / "000000000785.jpg"}"\n')
    (root / "serve_truncated.toml").write_text('[server]\nport = 0\n[model\n')
    foreign = onnx.load(str(pose))  # our export without its metadata: a foreign (mmdeploy-layout) pose ONNX
    del foreign.metadata_props[:]
    onnx.save(foreign, str(root / "foreign.onnx"))
    real = {".jpg": shared / "images" / "000000000785.jpg", ".onnx": pose, ".pth": pose_ckpt, ".json": ann}
    for suffix, source in real.items():
        (root / f"empty{suffix}").write_bytes(b"")
        data = source.read_bytes()
        (root / f"truncated{suffix}").write_bytes(data[: len(data) // 2])
    return {"root": root, "img": images / "000000000785.jpg", "images": images, "pose": pose, "det": det,
            "pose_ckpt": pose_ckpt, "det_ckpt": det_ckpt, "ann": ann, "preds": preds, "relu": relu,
            "foreign": root / "foreign.onnx",
            "dir": root / "a_folder", "missing": root / "missing", "empty": root / "empty",
            "truncated": root / "truncated", "out": root / "out"}


def _fill(text: str, files: dict) -> str:
    for key, value in files.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (_sha(p) if p.is_file() else "dir") for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("command, cls", sorted(MATRIX), ids=lambda v: v.replace(" ", "-"))
def test_bad_input(command, cls, files, capsys, monkeypatch, tmp_path):
    argv, code, message = MATRIX[(command, cls)]
    monkeypatch.chdir(tmp_path)  # default outputs (engines/, calibration/) would land here
    monkeypatch.setenv("RTMW_EDGE_HOME", str(tmp_path / "home"))
    before_inputs, before_cwd = _tree(files["root"]), _tree(tmp_path)
    capsys.readouterr()
    got = main([_fill(a, files) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert "Traceback" not in err, err
    assert len(errors) == 1, lines
    assert _fill(message, files) in errors[0], errors[0]
    assert got == code, (got, errors[0])
    assert _tree(files["root"]) == before_inputs  # inputs byte-identical, nothing new beside them
    assert _tree(tmp_path) == before_cwd  # nothing left in the working folder either
    assert not os.path.exists(UNWRITABLE)
