"""Datasets, paired transforms and samplers on small fixtures in the real on-disk formats."""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dataset.datasets import (
    GTA5,
    SYNTHIA,
    Batch,
    Cityscapes,
    CorruptImageError,
    DatasetLayoutError,
    InfiniteSampler,
    LabelFormatError,
    MissingFileError,
    Sample,
    SizeMismatchError,
    collate,
    eval_loader,
    infinite_loader,
    read_synthia_label,
)
from dataset.labels import (
    CLASS_NAMES,
    ID_TO_TRAIN_ID,
    IGNORE_INDEX,
    LABEL_IDS,
    PALETTE,
    SYNTHIA_16,
    SYNTHIA_ID_TO_TRAIN_ID,
)
from dataset.transforms import IMG_MEAN_BGR, PairedTransform, TransformSpec, denormalize, normalize

BLOCK = 16  # pixels per label block
ROWS, COLS = 4, 5  # blocks per image: images are 80x64 (W x H)
FIRST_ROW = (7, 26, 0, 33, 8)  # known ids in the top row -> trainIds 0, 13, 255, 18, 1
# One colour per label id (0..33): the image colour encodes the class, to check alignment.
ID_COLOURS = np.zeros((256, 3), dtype=np.uint8)
ID_COLOURS[list(LABEL_IDS)] = np.asarray(PALETTE, dtype=np.uint8)
ID_COLOURS[0] = (255, 255, 255)
IDENTITY = PairedTransform(TransformSpec())


def label_ids(variant: int) -> np.ndarray:
    """(64, 80) uint8 Cityscapes label ids in 16x16 blocks; asymmetric, so a flip shows."""
    grid = np.zeros((ROWS, COLS), dtype=np.uint8)
    grid[0] = FIRST_ROW
    rest = np.roll(np.asarray(LABEL_IDS, dtype=np.uint8), variant)
    grid[1:] = np.resize(rest, (ROWS - 1, COLS))
    return np.kron(grid, np.ones((BLOCK, BLOCK), dtype=np.uint8))


def save_rgb(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ID_COLOURS[ids], mode="RGB").save(path)


def save_palettised(path: Path, ids: np.ndarray) -> None:
    """GTA5 style: mode "P", indices = label ids, a palette that does not equal the indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids, mode="L").convert("P")
    image.putpalette([(i * 7 + c * 50) % 256 for i in range(256) for c in range(3)])
    image.save(path)


def save_grey(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids, mode="L").save(path)


@pytest.fixture
def gta5_root(tmp_path: Path) -> Path:
    root = tmp_path / "GTA5"
    for i in range(1, 4):
        ids = label_ids(i)
        save_rgb(root / "images" / f"{i:05d}.png", ids)
        save_palettised(root / "labels" / f"{i:05d}.png", ids)
    return root


CITIES = {"frankfurt": ("000000_000294", "000001_000019"), "lindau": ("000000_000019",)}


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    root = tmp_path / "Cityscapes"
    variant = 0
    for split in ("train", "val"):
        for city, frames in CITIES.items():
            for frame in frames:
                ids = label_ids(variant)
                variant += 1
                save_rgb(
                    root / "leftImg8bit" / split / city / f"{city}_{frame}_leftImg8bit.png", ids
                )
                save_grey(
                    root / "gtFine" / split / city / f"{city}_{frame}_gtFine_labelIds.png", ids
                )
    return root


def assert_aligned(image: torch.Tensor, label: torch.Tensor, margin: int = 2) -> None:
    """Where the label is one class within ``margin`` pixels, the image has that class's colour.

    The margin covers the interpolation kernels' reach (bicubic upsampling reaches further).
    """
    colours = torch.from_numpy(ID_COLOURS[list(LABEL_IDS)]).long()  # (19, 3) by trainId
    lab = label.float()[None, None]
    size = 2 * margin + 1
    uniform = (F.max_pool2d(lab, size, 1, margin) == -F.max_pool2d(-lab, size, 1, margin))[0, 0]
    mask = uniform & (label != IGNORE_INDEX)
    if margin:  # a crop edge may cut through a kernel's reach
        mask[:margin], mask[-margin:], mask[:, :margin], mask[:, -margin:] = (
            False,
            False,
            False,
            False,
        )
    assert mask.sum() > 50
    rgb = denormalize(image).long().permute(1, 2, 0)[mask]  # (N, 3)
    expected = colours[label[mask]]
    assert (rgb - expected).abs().max() <= 2


# --- reading and label mapping ---------------------------------------------------------------


def test_gta5_scans_and_pairs(gta5_root: Path) -> None:
    data = GTA5(gta5_root, IDENTITY)
    assert len(data) == 3
    assert [name for _, _, name in data.items] == ["00001.png", "00002.png", "00003.png"]
    for image_path, label_path, name in data.items:
        assert image_path == gta5_root / "images" / name
        assert label_path == gta5_root / "labels" / name


def test_cityscapes_scans_and_pairs(cityscapes_root: Path) -> None:
    data = Cityscapes(cityscapes_root, "val", IDENTITY)
    names = [name for _, _, name in data.items]
    assert names == [
        "frankfurt/frankfurt_000000_000294_leftImg8bit.png",
        "frankfurt/frankfurt_000001_000019_leftImg8bit.png",
        "lindau/lindau_000000_000019_leftImg8bit.png",
    ]
    _, label_path, _ = data.items[2]
    assert label_path == (
        cityscapes_root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    )
    unlabelled = Cityscapes(cityscapes_root, "train", IDENTITY, with_labels=False)
    assert unlabelled[0].label is None


def test_palette_is_not_identity(gta5_root: Path) -> None:
    """The fixture would catch a reader that converts "P" labels to RGB."""
    with Image.open(gta5_root / "labels/00001.png") as pil:
        assert pil.mode == "P"
        rgb = np.asarray(pil.convert("RGB"))
    assert not np.array_equal(rgb[..., 0], label_ids(1))


@pytest.mark.parametrize("which", ["gta5", "cityscapes"])
def test_label_ids_map_to_train_ids(which: str, gta5_root: Path, cityscapes_root: Path) -> None:
    if which == "gta5":
        sample = GTA5(gta5_root, IDENTITY)[0]
    else:
        sample = Cityscapes(cityscapes_root, "val", IDENTITY)[0]
    assert sample.label.dtype == torch.int64 and sample.label.shape == (64, 80)
    top = sample.label[BLOCK // 2, BLOCK // 2 :: BLOCK].tolist()
    assert top == [0, 13, 255, 18, 1]  # ids 7, 26, 0, 33, 8
    assert sample.image.dtype == torch.float32 and sample.image.shape == (3, 64, 80)
    assert_aligned(sample.image, sample.label)


# --- normalisation and transforms ------------------------------------------------------------


def test_normalize_known_pixel_and_round_trip() -> None:
    image = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1)  # RGB
    expected = torch.tensor([30 - IMG_MEAN_BGR[0], 20 - IMG_MEAN_BGR[1], 10 - IMG_MEAN_BGR[2]])
    torch.testing.assert_close(normalize(image).view(3), expected)
    batch = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    assert normalize(batch).shape == (2, 3, 5, 7)
    assert torch.equal(denormalize(normalize(batch)), batch)


def class_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A uint8 RGB (3, 64, 80) image whose colour encodes the uint8 (64, 80) trainId label."""
    ids = label_ids(3)
    image = torch.from_numpy(ID_COLOURS[ids]).permute(2, 0, 1).contiguous()
    return image, torch.from_numpy(ID_TO_TRAIN_ID[ids])


COMBINED = TransformSpec(resize=(160, 128), scale_range=(0.7, 1.3), crop=(64, 48), mirror=True)


@pytest.mark.parametrize(
    ("spec", "size", "margin"),
    [
        (TransformSpec(resize=(40, 32)), (32, 40), 2),
        (TransformSpec(scale_range=(0.5, 0.5)), (32, 40), 2),
        (TransformSpec(scale_range=(1.5, 1.5)), (96, 120), 2),
        (TransformSpec(crop=(48, 24)), (24, 48), 0),
        (TransformSpec(mirror=True), (64, 80), 0),
        (COMBINED, (48, 64), 4),  # bicubic x2 reaches 4 pixels
    ],
)
def test_transform_shapes_and_alignment(
    spec: TransformSpec, size: tuple[int, int], margin: int
) -> None:
    image, label = class_pair()
    for seed in range(4):
        rng = torch.Generator().manual_seed(seed)
        out_image, out_label = PairedTransform(spec)(image, label, rng)
        assert out_image.shape == (3, *size) and out_image.dtype == torch.float32
        assert out_label.shape == size and out_label.dtype == torch.int64
        assert_aligned(out_image, out_label, margin)


def test_random_scale_varies_with_seed() -> None:
    image, label = class_pair()
    transform = PairedTransform(TransformSpec(scale_range=(0.5, 1.5)))
    shapes = {transform(image, label, torch.Generator().manual_seed(s))[1].shape for s in range(6)}
    assert len(shapes) > 1


def test_crop_pads_small_image_with_mean_and_ignore() -> None:
    image, label = class_pair()  # 80x64
    out_image, out_label = PairedTransform(TransformSpec(crop=(100, 70)))(
        image, label, torch.Generator().manual_seed(0)
    )
    assert out_image.shape == (3, 70, 100) and out_label.shape == (70, 100)
    assert (out_image[:, 64:, :] == 0).all() and (out_image[:, :, 80:] == 0).all()
    assert (out_label[64:, :] == IGNORE_INDEX).all() and (out_label[:, 80:] == IGNORE_INDEX).all()
    assert torch.equal(out_label[:64, :80], label.long())


def test_mirror_flips_image_and_label_together() -> None:
    image, label = class_pair()
    transform = PairedTransform(TransformSpec(mirror=True))
    flipped = 0
    for seed in range(8):
        out_image, out_label = transform(image, label, torch.Generator().manual_seed(seed))
        if torch.equal(out_label, label.long().flip(-1)):
            flipped += 1
            assert torch.equal(out_image, normalize(image).flip(-1))
        else:
            assert torch.equal(out_label, label.long())
            assert torch.equal(out_image, normalize(image))
    assert 0 < flipped < 8


def test_label_at_full_resolution_resizes_image_only() -> None:
    image, label = class_pair()
    spec = TransformSpec(resize=(40, 32), label_at_full_resolution=True)
    out_image, out_label = PairedTransform(spec)(image, label, torch.Generator())
    assert out_image.shape == (3, 32, 40)
    assert torch.equal(out_label, label.long())


def test_image_rescale_changes_image_only() -> None:
    image, label = class_pair()
    spec = TransformSpec(resize=(40, 32), image_rescale=((1.5, 1.0),))
    out_image, out_label = PairedTransform(spec)(image, label, torch.Generator())
    assert out_image.shape == (3, 48, 60) and out_label.shape == (32, 40)
    never = TransformSpec(image_rescale=((1.5, 0.0),))
    assert PairedTransform(never)(image, label, torch.Generator())[0].shape == (3, 64, 80)


def test_blur_draws_half_the_time_with_sigma_up_to_one_and_keeps_the_label() -> None:
    import torchvision.transforms.v2.functional as TF

    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 24, 32), dtype=torch.uint8, generator=g)
    label = torch.randint(0, 19, (24, 32), dtype=torch.uint8, generator=g)
    transform = PairedTransform(TransformSpec(blur=True))
    blurred = 0
    for seed in range(16):
        out_image, out_label = transform(image, label, torch.Generator().manual_seed(seed))
        assert torch.equal(out_label, label.long())
        # the same draws, made here: p = 0.5, then sigma ~ U(0, 1)
        rng = torch.Generator().manual_seed(seed)
        if torch.rand((), generator=rng).item() >= 0.5:
            assert torch.equal(out_image, normalize(image))
            continue
        blurred += 1
        sigma = torch.rand((), generator=rng).item()
        size = 2 * math.ceil(3 * sigma) + 1
        expected = normalize(TF.gaussian_blur(image, [size, size], [sigma, sigma]))
        assert torch.equal(out_image, expected)
        if sigma > 0.5:  # (a smaller sigma may round back to the same uint8 image)
            assert not torch.equal(out_image, normalize(image))
    assert 0 < blurred < 16


def test_blur_is_off_by_default_and_refused_on_val() -> None:
    from utils.config import ConfigError, load_config

    cfg = load_config(None)
    assert not (cfg.data.source.blur or cfg.data.target.blur or cfg.data.val.blur)
    with pytest.raises(ConfigError, match="data.val.blur"):
        load_config(None, ["data.val.blur=true"])


def test_transform_spec_rejects_crop_with_unpaired_sizes() -> None:
    with pytest.raises(ValueError, match="crop"):
        TransformSpec(crop=(8, 8), label_at_full_resolution=True)
    with pytest.raises(ValueError, match="scale_range"):
        TransformSpec(scale_range=(1.2, 0.8))


# --- determinism -----------------------------------------------------------------------------


def test_same_index_and_seed_give_the_same_sample(gta5_root: Path) -> None:
    spec = TransformSpec(scale_range=(0.5, 1.5), crop=(48, 40), mirror=True)
    data = GTA5(gta5_root, PairedTransform(spec))
    first, again = data[1, 123], data[1, 123]
    assert torch.equal(first.image, again.image) and torch.equal(first.label, again.label)
    assert first.name == "00002.png"
    assert torch.equal(data[1].image, data[1, 1].image)  # the seed defaults to the index
    others = [data[1, seed] for seed in range(124, 128)]
    assert any(not torch.equal(first.image, other.image) for other in others)


# --- list files and errors -------------------------------------------------------------------


def test_gta5_list_file_relative_to_cwd(
    gta5_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists/gta5.txt").write_text("00003.png\n\n00001.png\n")
    monkeypatch.chdir(tmp_path)
    data = GTA5(gta5_root, IDENTITY, list_file="lists/gta5.txt")
    assert [name for _, _, name in data.items] == ["00003.png", "00001.png"]
    assert data[0].name == "00003.png"


def test_gta5_list_entry_missing(gta5_root: Path, tmp_path: Path) -> None:
    list_file = tmp_path / "gta5.txt"
    list_file.write_text("00001.png\n00009.png\n")
    with pytest.raises(MissingFileError, match=r"gta5\.txt:2: entry '00009\.png'"):
        GTA5(gta5_root, IDENTITY, list_file=list_file)
    (gta5_root / "labels/00002.png").unlink()
    list_file.write_text("00002.png\n")
    with pytest.raises(MissingFileError, match=r":1: entry '00002\.png': label"):
        GTA5(gta5_root, IDENTITY, list_file=list_file)
    with pytest.raises(MissingFileError, match="00002.png"):
        GTA5(gta5_root, IDENTITY)


def test_cityscapes_list_files_both_forms(cityscapes_root: Path, tmp_path: Path) -> None:
    images = tmp_path / "train.txt"
    images.write_text("lindau/lindau_000000_000019_leftImg8bit.png\n")
    labels = tmp_path / "label.txt"
    labels.write_text("frankfurt/frankfurt_000000_000294_gtFine_labelIds.png\n")
    by_image = Cityscapes(cityscapes_root, "val", IDENTITY, list_file=images)
    by_label = Cityscapes(cityscapes_root, "val", IDENTITY, list_file=labels)
    assert by_image[0].name == "lindau/lindau_000000_000019_leftImg8bit.png"
    assert by_label[0].name == "frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    assert by_label[0].label is not None
    images.write_text(
        "lindau/lindau_000000_000019_leftImg8bit.png\nlindau/missing_leftImg8bit.png\n"
    )
    with pytest.raises(MissingFileError, match=r"train\.txt:2: entry 'lindau/missing_leftImg8bit"):
        Cityscapes(cityscapes_root, "val", IDENTITY, list_file=images)


def test_missing_root_and_split_name_the_layout(tmp_path: Path, cityscapes_root: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"<root>/images/\*\.png.*GTA5 layout"):
        GTA5(tmp_path / "nowhere", IDENTITY)
    with pytest.raises(DatasetLayoutError, match="Cityscapes layout"):
        Cityscapes(tmp_path / "nowhere", "val", IDENTITY)
    with pytest.raises(DatasetLayoutError, match=r"leftImg8bit/test.*Cityscapes layout"):
        Cityscapes(cityscapes_root, "test", IDENTITY)
    (tmp_path / "empty/images").mkdir(parents=True)
    (tmp_path / "empty/labels").mkdir()
    with pytest.raises(DatasetLayoutError, match="no images"):
        GTA5(tmp_path / "empty", IDENTITY)


def test_corrupt_image_names_the_file(gta5_root: Path) -> None:
    bad = gta5_root / "images/00002.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    data = GTA5(gta5_root, IDENTITY)
    with pytest.raises(CorruptImageError, match="00002.png"):
        data[1]
    (gta5_root / "labels/00003.png").write_bytes(b"garbage")
    with pytest.raises(CorruptImageError, match=r"labels/00003\.png"):
        data[2]


def test_rgb_label_is_rejected(gta5_root: Path) -> None:
    path = gta5_root / "labels/00001.png"
    save_rgb(path, label_ids(1))
    with pytest.raises(LabelFormatError, match=r'00001\.png has PIL mode "RGB"'):
        GTA5(gta5_root, IDENTITY)[0]


def test_gta5_size_mismatch_resizes_label_and_warns_once(
    gta5_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_palettised(gta5_root / "labels/00002.png", label_ids(2)[::2, ::2])  # 40x32
    data = GTA5(gta5_root, IDENTITY)
    with caplog.at_level(logging.WARNING, logger="dataset.datasets"):
        samples = [data[1], data[1, 7], data[0]]
    assert samples[0].label.shape == (64, 80)
    assert_aligned(samples[0].image, samples[0].label)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "00002.png" in warnings[0].getMessage()


def test_cityscapes_size_mismatch_raises(cityscapes_root: Path) -> None:
    path = cityscapes_root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    save_grey(path, label_ids(0)[::2, ::2])
    with pytest.raises(SizeMismatchError, match="lindau_000000_000019_gtFine_labelIds.png"):
        Cityscapes(cityscapes_root, "val", IDENTITY)[2]


# --- sampling and loading --------------------------------------------------------------------


def take(sampler: InfiniteSampler, n: int) -> list[tuple[int, int]]:
    return list(itertools.islice(iter(sampler), n))


def test_infinite_sampler_epochs_are_permutations() -> None:
    stream = take(InfiniteSampler(7, seed=3), 21)
    assert stream == take(InfiniteSampler(7, seed=3), 21)
    epochs = [[index for index, _ in stream[e * 7 : (e + 1) * 7]] for e in range(3)]
    assert all(sorted(epoch) == list(range(7)) for epoch in epochs)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
    assert len({seed for _, seed in stream}) == 21
    assert [i for i, _ in take(InfiniteSampler(7, seed=3, shuffle=False), 9)] == [
        0, 1, 2, 3, 4, 5, 6, 0, 1,
    ]  # fmt: skip
    assert take(InfiniteSampler(7, seed=4), 7) != stream[:7]


@pytest.mark.parametrize(("rank", "world_size"), [(0, 1), (1, 3)])
@pytest.mark.parametrize("start", [0, 3, 7, 10])
def test_infinite_sampler_start_skips(start: int, rank: int, world_size: int) -> None:
    fresh = take(InfiniteSampler(7, seed=5, rank=rank, world_size=world_size), start + 15)
    resumed = take(InfiniteSampler(7, 5, start=start, rank=rank, world_size=world_size), 15)
    assert resumed == fresh[start:]


def test_infinite_sampler_ranks_partition_the_stream() -> None:
    full = take(InfiniteSampler(5, seed=1), 30)
    shards = [take(InfiniteSampler(5, seed=1, rank=r, world_size=3), 10) for r in range(3)]
    assert [shards[p % 3][p // 3] for p in range(30)] == full


def test_infinite_loader_same_batches_for_any_workers(gta5_root: Path) -> None:
    spec = TransformSpec(scale_range=(0.5, 1.5), crop=(48, 40), mirror=True)
    data = GTA5(gta5_root, PairedTransform(spec))
    serial = list(itertools.islice(infinite_loader(data, 2, seed=9), 4))
    parallel = list(itertools.islice(infinite_loader(data, 2, seed=9, num_workers=2), 4))
    resumed = list(itertools.islice(infinite_loader(data, 2, seed=9, start_step=2), 2))
    for a, b in zip(serial, parallel, strict=True):
        assert isinstance(a, Batch) and a.image.shape == (2, 3, 40, 48)
        assert a.names == b.names
        assert torch.equal(a.image, b.image) and torch.equal(a.label, b.label)
    for a, b in zip(serial[2:], resumed, strict=True):
        assert a.names == b.names and torch.equal(a.image, b.image)


def test_eval_loader_shards_cover_each_index_once(cityscapes_root: Path) -> None:
    data = Cityscapes(cityscapes_root, "val", IDENTITY)
    everything = [name for batch in eval_loader(data) for name in batch.names]
    assert everything == [name for _, _, name in data.items]
    shards = [
        [n for b in eval_loader(data, rank=r, world_size=2) for n in b.names] for r in range(2)
    ]
    assert shards[0] == everything[0::2] and shards[1] == everything[1::2]
    assert sorted(shards[0] + shards[1]) == sorted(everything)


def test_collate_without_labels() -> None:
    samples = [Sample(torch.zeros(3, 4, 5), None, f"{i}.png") for i in range(2)]
    batch = collate(samples)
    assert batch.image.shape == (2, 3, 4, 5) and batch.label is None
    assert batch.names == ["0.png", "1.png"]
    mixed = [samples[0], Sample(torch.zeros(3, 4, 5), torch.zeros(4, 5, dtype=torch.long), "x")]
    with pytest.raises(ValueError, match="unlabelled"):
        collate(mixed)


# --- SYNTHIA-RAND-CITYSCAPES ----------------------------------------------------------------

# The SYNTHIA table of docs/data.md, written out: SYNTHIA class id -> trainId.
SYNTHIA_TABLE = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10, 10: 11,
                 17: 12, 8: 13, 19: 15, 12: 17, 11: 18}  # fmt: skip
# Known SYNTHIA ids in the top row: road, car, void, terrain (16: not mapped), bicycle.
SYNTHIA_FIRST_ROW = (3, 8, 0, 16, 11)


def synthia_ids(variant: int) -> np.ndarray:
    """(64, 80) uint16 SYNTHIA class ids in 16x16 blocks; asymmetric, so a flip shows."""
    grid = np.zeros((ROWS, COLS), dtype=np.uint16)
    grid[0] = SYNTHIA_FIRST_ROW
    grid[1:] = np.resize(np.roll(np.array(list(SYNTHIA_TABLE), dtype=np.uint16), variant),
                         (ROWS - 1, COLS))  # fmt: skip
    return np.kron(grid, np.ones((BLOCK, BLOCK), dtype=np.uint16))


def save_synthia_label(path: Path, ids: np.ndarray) -> None:
    """SYNTHIA style: a 16-bit 3-channel PNG, R (the first channel in RGB order) = class id;
    G and B hold other numbers, so reading the wrong channel gives other classes."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.stack([ids, ids * 7 + 500, np.full_like(ids, 3)], axis=-1).astype(np.uint16)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV writes BGR


def synthia_colours(ids: np.ndarray) -> np.ndarray:
    """The image whose colour encodes the trainId of each SYNTHIA id (white where ignored)."""
    train_ids = np.full(ids.shape, 255, dtype=np.int64)
    for synthia_id, train_id in SYNTHIA_TABLE.items():
        train_ids[ids == synthia_id] = train_id
    colours = ID_COLOURS[[*LABEL_IDS, 0]]  # by trainId, then white for 255
    return colours[np.where(train_ids == 255, len(LABEL_IDS), train_ids)]


@pytest.fixture
def synthia_root(tmp_path: Path) -> Path:
    root = tmp_path / "SYNTHIA"
    for i in range(3):
        ids = synthia_ids(i)
        (root / "RGB").mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthia_colours(ids), mode="RGB").save(root / "RGB" / f"{i:07d}.png")
        save_synthia_label(root / "GT" / "LABELS" / f"{i:07d}.png", ids)
    return root


def test_synthia_reads_the_first_rgb_channel_of_16_bit_labels(synthia_root: Path) -> None:
    import cv2

    path = synthia_root / "GT/LABELS/0000000.png"
    with Image.open(path) as pil:
        assert pil.mode.startswith("RGB")  # PIL sees colour, and cannot keep its 16 bits
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (64, 80, 3)
    assert not np.array_equal(raw[..., 0], raw[..., 2])  # the channels differ
    sample = SYNTHIA(synthia_root, IDENTITY)[0]
    assert sample.name == "0000000.png" and sample.label.shape == (64, 80)
    top = sample.label[BLOCK // 2, BLOCK // 2 :: BLOCK].tolist()
    assert top == [0, 13, 255, 255, 18]  # road, car, void, terrain (absent), bicycle
    assert torch.equal(read_synthia_label(path), sample.label.to(torch.uint8))
    # Taking the BGR array's first channel (B, the last in RGB) would read id 3 everywhere.
    assert (SYNTHIA_ID_TO_TRAIN_ID[raw[..., 0].clip(max=255)] == 0).all()
    assert_aligned(sample.image, sample.label)


def test_synthia_id_table_is_data_md() -> None:
    expected = np.full(256, 255, dtype=np.uint8)
    expected[list(SYNTHIA_TABLE)] = list(SYNTHIA_TABLE.values())
    assert np.array_equal(SYNTHIA_ID_TO_TRAIN_ID, expected)
    trrn, truck, train = (CLASS_NAMES.index(n) for n in ("terrain", "truck", "train"))
    assert {trrn, truck, train}.isdisjoint(SYNTHIA_ID_TO_TRAIN_ID.tolist())
    assert tuple(sorted(SYNTHIA_TABLE.values())) == SYNTHIA_16


def test_synthia_ids_beyond_255_are_ignored(synthia_root: Path) -> None:
    ids = synthia_ids(0)
    ids[:BLOCK, :BLOCK] = 256 + 3  # 16-bit values whose low byte is road's id
    save_synthia_label(synthia_root / "GT/LABELS/0000000.png", ids)
    label = SYNTHIA(synthia_root, IDENTITY)[0].label
    assert (label[:BLOCK, :BLOCK] == 255).all() and label[0, BLOCK] == 13


def test_synthia_paired_transforms_keep_alignment(synthia_root: Path) -> None:
    spec = TransformSpec(resize=(100, 80), scale_range=(0.8, 1.2), crop=(64, 48), mirror=True)
    data = SYNTHIA(synthia_root, PairedTransform(spec))
    for seed in range(4):
        sample = data[1, seed]
        assert sample.image.shape == (3, 48, 64) and sample.label.shape == (48, 64)
        assert_aligned(sample.image, sample.label, margin=3)


def test_synthia_errors_name_the_file(synthia_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"RGB/\*\.png.*SYNTHIA-RAND-CITYSCAPES"):
        SYNTHIA(tmp_path / "nowhere", IDENTITY)
    list_file = tmp_path / "synthia.txt"
    list_file.write_text("0000002.png\n0000009.png\n")
    with pytest.raises(MissingFileError, match=r"synthia\.txt:2: entry '0000009\.png'"):
        SYNTHIA(synthia_root, IDENTITY, list_file=list_file)
    list_file.write_text("0000002.png\n")
    assert [s.name for s in SYNTHIA(synthia_root, IDENTITY, list_file=list_file)] == ["0000002.png"]
    label = synthia_root / "GT/LABELS/0000001.png"
    save_grey(label, label_ids(1))  # an 8-bit label where SYNTHIA's are 16-bit
    data = SYNTHIA(synthia_root, IDENTITY)
    with pytest.raises(LabelFormatError, match=r"LABELS/0000001\.png: 8-bit with 1 channel"):
        data[1]
    Image.fromarray(synthia_ids(1)).save(label)  # 16-bit, but one channel (PIL mode "I;16")
    with pytest.raises(LabelFormatError, match=r"0000001\.png: 16-bit with 1 channel"):
        data[1]
    label.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(CorruptImageError, match=r"LABELS/0000001\.png"):
        data[1]
    save_synthia_label(label, synthia_ids(1)[::2, ::2])
    with pytest.raises(SizeMismatchError, match=r"0000001\.png is 40x32 but its image is 80x64"):
        data[1]
    label.unlink()
    with pytest.raises(MissingFileError, match=r"label .*GT/LABELS/0000001\.png of image"):
        SYNTHIA(synthia_root, IDENTITY)
