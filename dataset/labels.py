"""The 19-class GTA5/Cityscapes label table, in one place.

Both GTA5 label PNGs and Cityscapes ``*_gtFine_labelIds.png`` store Cityscapes label ids
(0..33, -1 for the licence plate). Training and evaluation use trainIds 0..18; every other id
maps to ``IGNORE_INDEX``. Remapping is a 256-entry lookup table applied with one indexing op.
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

# Cityscapes label id of each trainId (SPEC.md).
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
