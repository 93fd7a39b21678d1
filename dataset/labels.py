"""The 19-class GTA5/Cityscapes label table, SYNTHIA's ids and the 16/13-class subsets, in one
place.

Both GTA5 label PNGs and Cityscapes ``*_gtFine_labelIds.png`` store Cityscapes label ids
(0..33, -1 for the licence plate). Training and evaluation use trainIds 0..18; every other id
maps to ``IGNORE_INDEX``. Remapping is a 256-entry lookup table applied with one indexing op.

SYNTHIA-RAND-CITYSCAPES labels store SYNTHIA's own class ids (docs/data.md); they map to the same
trainIds, and terrain, truck and train never occur. Results on SYNTHIA -> Cityscapes are
reported on the 16 classes that SYNTHIA has and on 13 (also without wall, fence and pole).
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 19
IGNORE_INDEX = 255

# trainId order (the paper's Table 1 column order).
CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "light", "sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

# Cityscapes label id of each trainId (docs/method.md, "Task and classes").
LABEL_IDS: tuple[int, ...] = (
    7,
    8,
    11,
    12,
    13,
    17,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    26,
    27,
    28,
    31,
    32,
    33,
)

# Cityscapes' official colours, one RGB triple per trainId.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip


def id_to_train_id_lut() -> np.ndarray:
    """256-entry uint8 table: Cityscapes label id -> trainId (255 for every other id)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[list(LABEL_IDS)] = np.arange(NUM_CLASSES, dtype=np.uint8)
    return lut


ID_TO_TRAIN_ID = id_to_train_id_lut()


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """Map an (H, W) trainId array to an (H, W, 3) uint8 RGB image; ignored pixels are black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:NUM_CLASSES] = np.asarray(PALETTE, dtype=np.uint8)
    return table[train_ids.astype(np.uint8)]


# SYNTHIA class id -> trainId (docs/data.md); SYNTHIA has no terrain, truck or train.
SYNTHIA_TO_TRAIN_ID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10, 10: 11, 17: 12, 8: 13,
    19: 15, 12: 17, 11: 18,
}  # fmt: skip


def synthia_to_train_id_lut() -> np.ndarray:
    """256-entry uint8 table: SYNTHIA class id -> trainId (255 for every other id)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[list(SYNTHIA_TO_TRAIN_ID)] = list(SYNTHIA_TO_TRAIN_ID.values())
    return lut


SYNTHIA_ID_TO_TRAIN_ID = synthia_to_train_id_lut()

# The trainIds each protocol reports, in trainId order (the papers' column order).
SYNTHIA_16: tuple[int, ...] = tuple(sorted(SYNTHIA_TO_TRAIN_ID.values()))  # no trrn, truck, train
SYNTHIA_13: tuple[int, ...] = tuple(
    c for c in SYNTHIA_16 if CLASS_NAMES[c] not in ("wall", "fence", "pole")
)
CLASS_SUBSETS: dict[int, tuple[int, ...]] = {
    NUM_CLASSES: tuple(range(NUM_CLASSES)),
    len(SYNTHIA_16): SYNTHIA_16,
    len(SYNTHIA_13): SYNTHIA_13,
}


def output_train_ids(num_outputs: int) -> tuple[int, ...]:
    """The trainId of each output channel of a model with ``num_outputs`` classes: 19 are the
    trainIds; 16 and 13 (the 16- and 13-class SYNTHIA models, e.g. MaxSquare's ``class_16``)
    are the subset's classes in trainId order."""
    if num_outputs not in CLASS_SUBSETS:
        raise ValueError(
            f"a model with {num_outputs} outputs: only 19 (the Cityscapes trainIds), 16 and 13 "
            f"(the SYNTHIA subsets, in trainId order) can be scored against Cityscapes labels"
        )
    return CLASS_SUBSETS[num_outputs]
