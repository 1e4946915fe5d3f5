"""Keypoint sets: names, left/right flip pairs and the body parts used for colours and per-part AP."""

from __future__ import annotations

from dataclasses import dataclass

COCO17 = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
FEET = ("left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel")
FACE = tuple(f"face-{i}" for i in range(68))
_FINGERS = ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")


def _hand(side: str) -> tuple[str, ...]:
    return (f"{side}_hand_root",) + tuple(f"{side}_{f}{j}" for f in _FINGERS for j in range(1, 5))


COCO_WHOLEBODY = COCO17 + FEET + FACE + _hand("left") + _hand("right")

# The 68 face points mirror as in the 300W/COCO-WholeBody layout: jaw 0..16 reversed, brows 17..26
# reversed, nose bridge 27..30 fixed, nostrils 31..35 reversed, eyes and mouth by their own rings.
_FACE_FLIP = (
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65]
)


def flip_indices_by_name(names: tuple[str, ...]) -> list[int]:
    """Index of each keypoint's mirror image: swap 'left'/'right' in names; face points by the table."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for name in names:
        if name.startswith("face-"):
            out.append(index[f"face-{_FACE_FLIP[int(name[5:])]}"])
        elif "left" in name:
            out.append(index[name.replace("left", "right")])
        elif "right" in name:
            out.append(index[name.replace("right", "left")])
        else:
            out.append(index[name])
    return out


@dataclass(frozen=True)
class KeypointSet:
    name: str
    names: tuple[str, ...]
    parts: dict[str, tuple[int, int]]  # part -> [start, stop) index range

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    @property
    def flip_indices(self) -> list[int]:
        return flip_indices_by_name(self.names)


KEYPOINT_SETS = {
    "coco": KeypointSet("coco", COCO17, {"body": (0, 17)}),
    "coco-wholebody": KeypointSet(
        "coco-wholebody", COCO_WHOLEBODY,
        {"body": (0, 17), "foot": (17, 23), "face": (23, 91), "left_hand": (91, 112), "right_hand": (112, 133)},
    ),
}


# OKS sigmas of the COCO-WholeBody protocol (COCO-WholeBody evaluation, myeval_wholebody.py); the first 17
# are COCO's body sigmas.
_SIGMAS_BODY = (.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107, .087, .087,
                .089, .089)
_SIGMAS_FOOT = (.068, .066, .066, .092, .094, .094)
_SIGMAS_FACE = (.042, .043, .044, .043, .040, .035, .031, .025, .020, .023, .029, .032, .037, .038, .043,
                .041, .045, .013, .012, .011, .011, .012, .012, .011, .011, .013, .015, .009, .007, .007,
                .007, .012, .009, .008, .016, .010, .017, .011, .009, .011, .009, .007, .013, .008, .011,
                .012, .010, .034, .008, .008, .009, .008, .008, .007, .010, .008, .009, .009, .009, .007,
                .007, .008, .011, .008, .008, .008, .010, .008)
_SIGMAS_HAND = (.029, .022, .035, .037, .047, .026, .025, .024, .035, .018, .024, .022, .026, .017,
                .021, .021, .032, .020, .019, .022, .031)
OKS_SIGMAS = {
    "coco": _SIGMAS_BODY,
    "coco-wholebody": _SIGMAS_BODY + _SIGMAS_FOOT + _SIGMAS_FACE + _SIGMAS_HAND + _SIGMAS_HAND,
}
