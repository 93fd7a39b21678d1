"""Any folder as a domain (``dataset: folder``) and the benchmarks after GTA5 -> Cityscapes
(ACDC, Dark Zurich, NTHU CrossCity), on fixtures the tests write in exactly their layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN
from PIL import Image

import evaluate_cityscapes
import predict
import train_norm_only
from dataset.build import build_dataset
from dataset.datasets import (
    CorruptImageError,
    DatasetLayoutError,
    LabelFormatError,
    MissingFileError,
    SizeMismatchError,
)
from dataset.folder import FolderDataset, LabelMapError, find_images, read_label_map
from dataset.labels import ID_TO_TRAIN_ID, IGNORE_INDEX, LABEL_IDS, PALETTE, SYNTHIA_13
from dataset.targets import ACDC, CrossCity, DarkZurich
from dataset.transforms import PairedTransform, TransformSpec
from utils.config import ConfigError, load_config

IDENTITY = PairedTransform(TransformSpec())
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
W, H = 40, 24


def write_image(path: Path, value: int = 100, size: tuple[int, int] = (W, H)) -> Path:
    """An RGB image whose red channel is ``value`` (to tell images apart after loading)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((size[1], size[0], 3), np.uint8)
    rgb[..., 0] = value
    Image.fromarray(rgb).save(path, **({"quality": 100} if path.suffix == ".jpg" else {}))
    return path


def write_label(path: Path, ids: np.ndarray | int, size: tuple[int, int] = (W, H)) -> Path:
    """An 8-bit grey label PNG of ``ids`` (an array, or one id everywhere)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((size[1], size[0]), ids, np.uint8) if np.isscalar(ids) else ids
    Image.fromarray(array.astype(np.uint8), mode="L").save(path)
    return path


def stripes(values: list[int]) -> np.ndarray:
    """(H, W) ids in vertical stripes, one per value."""
    return np.repeat(np.asarray(values, np.uint8), -(-W // len(values)))[:W][None].repeat(H, 0)


# --- dataset: folder -------------------------------------------------------------------------


def test_finds_nested_images_of_several_formats_in_a_stable_order(tmp_path: Path) -> None:
    names = ["b.png", "a/z.jpg", "a/b/c.bmp", "a/b/d.tif", "c.webp", "A.PNG"]
    for i, name in enumerate(names):
        write_image(tmp_path / name, 10 * i)
    (tmp_path / "notes.txt").write_text("not an image")
    images, others = find_images(tmp_path)
    relative = [p.relative_to(tmp_path).as_posix() for p in images]
    assert relative == sorted(names) and others == [tmp_path / "notes.txt"]
    dataset = FolderDataset(tmp_path, IDENTITY)
    assert [dataset[i].name for i in range(len(dataset))] == sorted(names)
    assert all(dataset[i].label is None for i in range(len(dataset)))
    assert dataset[0].image.shape == (3, H, W)


def test_list_file_selects_by_relative_path(tmp_path: Path) -> None:
    for name in ("x/1.png", "x/2.png", "3.png"):
        write_image(tmp_path / "img" / name)
    (tmp_path / "list.txt").write_text("x/2.png\n\n3.png\n")
    dataset = FolderDataset(tmp_path / "img", IDENTITY, list_file=tmp_path / "list.txt")
    assert [item[2] for item in dataset.items] == ["x/2.png", "3.png"]
    (tmp_path / "bad.txt").write_text("x/9.png\n")
    with pytest.raises(MissingFileError, match=r"bad.txt:1: entry 'x/9.png'"):
        FolderDataset(tmp_path / "img", IDENTITY, list_file=tmp_path / "bad.txt")


def test_labels_by_relative_path_and_suffix_are_trainids(tmp_path: Path) -> None:
    write_image(tmp_path / "img" / "seq" / "f1_rgb.jpg")
    write_label(tmp_path / "lab" / "seq" / "f1_gt.png", stripes([0, 13, 255, 18]))
    dataset = FolderDataset(tmp_path / "img", IDENTITY, label_root=tmp_path / "lab",
                            image_suffix="_rgb.jpg", label_suffix="_gt.png")  # fmt: skip
    label = dataset[0].label
    assert label.shape == (H, W) and label.dtype == torch.int64
    assert label[0, 0] == 0 and label[0, 10] == 13 and label[0, 20] == 255 and label[0, 39] == 18


def test_label_map_is_applied_and_unlisted_ids_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "map.yaml").write_text("# my camera's ids\n3: 0\n4: 13\n9: 255\n")
    lut = read_label_map(tmp_path / "map.yaml")
    assert lut[3] == 0 and lut[4] == 13 and lut[9] == IGNORE_INDEX and lut[5] == IGNORE_INDEX
    assert (np.delete(lut, [3, 4]) == IGNORE_INDEX).all()
    write_image(tmp_path / "img" / "a.png")
    write_label(tmp_path / "lab" / "a.png", stripes([3, 4, 5, 9]))
    dataset = FolderDataset(tmp_path / "img", IDENTITY, label_root=tmp_path / "lab", label_lut=lut)
    assert dataset[0].label[0, ::10].tolist() == [0, 13, IGNORE_INDEX, IGNORE_INDEX]


def test_label_map_errors_name_the_file_and_the_entry(tmp_path: Path) -> None:
    cases = {"far.yaml": ("300: 1\n", "id 300"), "class.yaml": ("7: 19\n", "maps to 19"),
             "text.yaml": ("- 1\n- 2\n", "expected 'id: trainId'"),
             "key.yaml": ("road: 0\n", "'road' is not a label id")}  # fmt: skip
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(LabelMapError, match=f"{name}.*{message}"):
            read_label_map(tmp_path / name)
    with pytest.raises(LabelMapError, match="nowhere.yaml not found"):
        read_label_map(tmp_path / "nowhere.yaml")


def test_labels_that_are_not_trainids_need_a_map(tmp_path: Path) -> None:
    write_image(tmp_path / "img" / "a.png")
    write_label(tmp_path / "lab" / "a.png", stripes([7, 26]))  # Cityscapes label ids
    dataset = FolderDataset(tmp_path / "img", IDENTITY, label_root=tmp_path / "lab")
    with pytest.raises(LabelFormatError, match=r"lab/a.png holds \[26\].*label_map"):
        dataset[0]


def test_bad_folders_are_errors_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="no images under .*empty.*it holds no file"):
        FolderDataset(tmp_path / "empty", IDENTITY)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("x")
    with pytest.raises(DatasetLayoutError, match=r"\.\.\.; found only sub/notes.txt\)"):
        FolderDataset(tmp_path / "empty", IDENTITY)
    with pytest.raises(DatasetLayoutError, match="nowhere not found"):
        FolderDataset(tmp_path / "nowhere", IDENTITY)
    write_image(tmp_path / "img" / "a.png")
    write_image(tmp_path / "img" / "b.png")
    write_label(tmp_path / "lab" / "a.png", 0)
    with pytest.raises(MissingFileError, match=r"label .*lab/b.png of image b.png not found"):
        FolderDataset(tmp_path / "img", IDENTITY, label_root=tmp_path / "lab")
    write_label(tmp_path / "lab" / "b.png", 0, size=(W // 2, H))
    with pytest.raises(SizeMismatchError, match=rf"lab/b.png is {W // 2}x{H} but its image"):
        FolderDataset(tmp_path / "img", IDENTITY, label_root=tmp_path / "lab")


def test_unreadable_images_are_an_error_or_skipped_and_counted(tmp_path, caplog) -> None:
    for name in ("a.png", "c.png"):
        write_image(tmp_path / name)
    (tmp_path / "b.png").write_bytes(b"not a png at all")
    message = r"1 of 3 images under .* cannot be read: b.png; .*skip_unreadable"
    with pytest.raises(CorruptImageError, match=message):
        FolderDataset(tmp_path, IDENTITY)
    dataset = FolderDataset(tmp_path, IDENTITY, skip_unreadable=True)
    assert [item[2] for item in dataset.items] == ["a.png", "c.png"] and dataset.skipped == 1
    assert "skipping 1 of 3 images" in caplog.text
    # A header that opens with data that does not decode: the next image, with a warning.
    good = (tmp_path / "c.png").read_bytes()
    (tmp_path / "a.png").write_bytes(good[: len(good) // 2])
    assert dataset[0].name == "c.png" and "the next image taken" in caplog.text
    with pytest.raises(CorruptImageError, match="a.png"):  # without the key: an error
        FolderDataset(tmp_path, IDENTITY, list_file=_list(tmp_path))[0]


def _list(tmp_path: Path) -> Path:
    (tmp_path / "list.txt").write_text("a.png\nc.png\n")
    return tmp_path / "list.txt"


def test_images_are_read_upright_by_their_exif_orientation(tmp_path: Path) -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: upright it is H wide and W high
    (tmp_path / "img").mkdir()
    image.save(tmp_path / "img" / "r.jpg", exif=exif)
    write_label(tmp_path / "lab" / "r.png", 0, size=(H, W))
    dataset = FolderDataset(tmp_path / "img", IDENTITY, label_root=tmp_path / "lab")
    assert dataset[0].image.shape == (3, W, H) and dataset[0].label.shape == (W, H)


def test_folder_section_keys_are_checked_at_load_time(tmp_path: Path) -> None:
    cases = {
        ("data.val.dataset=folder",): "data.val.label_root: a folder val set needs its labels",
        ("data.source.label_map=m.yaml",): "data.source.label_map='m.yaml': only dataset folder",
        ("data.val.dataset=folder", "data.val.label_root=x", "data.val.skip_unreadable=true"):
            "data.val.skip_unreadable: evaluation scores every image",
        ("data.target.dataset=folder", "data.target.label_map=m.yaml"):
            "data.target.label_map: a map of labels, but data.target.label_root is not set",
    }  # fmt: skip
    for overrides, message in cases.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(None, overrides)
    # As a target, a folder needs nothing but its root, and its labels are not read.
    write_image(tmp_path / "frames" / "0001.jpg")
    cfg = load_config(
        None, ["data.target.dataset=folder", f"data.target.root={tmp_path / 'frames'}"]
    )
    target = build_dataset(cfg.data.target, with_labels=False)
    assert len(target) == 1 and target[0].label is None


# --- ACDC, Dark Zurich, CrossCity -------------------------------------------------------------


def acdc_root(tmp_path: Path, merged: bool = False) -> Path:
    """The four conditions x train/val, one sequence each, two frames per sequence (and the
    reference images of train, which are not part of any split)."""
    root = tmp_path / "ACDC"
    for c, condition in enumerate(("fog", "night", "rain", "snow")):
        for split in ("train", "val"):
            for frame in range(2):
                name = f"GOPR04{c}{frame}_frame_0000{frame}1"
                part = split if merged else f"{condition}/{split}/GOPR04{c}0"
                write_image(root / "rgb_anon" / part / f"{name}_rgb_anon.png", 10 * c + frame)
                write_label(root / "gt" / part / f"{name}_gt_labelTrainIds.png",
                            stripes([c, 13 + frame, 255]))  # fmt: skip
                write_label(root / "gt" / part / f"{name}_gt_labelIds.png", 7)
        if not merged:
            ref = root / "rgb_anon" / condition / "train_ref" / f"GOPR04{c}0"
            write_image(ref / f"GOPR04{c}0_frame_000001_rgb_ref_anon.png")
    return root


def test_acdc_each_condition_and_all(tmp_path: Path) -> None:
    root = acdc_root(tmp_path)
    fog = ACDC(root, "fog", "train", IDENTITY)
    assert [item[2] for item in fog.items] == [
        "fog/train/GOPR0400/GOPR0400_frame_000001_rgb_anon.png",
        "fog/train/GOPR0400/GOPR0401_frame_000011_rgb_anon.png",
    ]
    assert fog[1].label[0, ::14].tolist() == [0, 14, 255]
    every = ACDC(root, "all", "val", IDENTITY)
    assert len(every) == 8 and {n.split("/")[0] for _, _, n in every.items} == {
        "fog", "night", "rain", "snow"}  # fmt: skip
    assert set(torch.unique(every[3].label).tolist()) == {1, 14, 255}  # night, second frame
    unlabelled = ACDC(root, "night", "train", IDENTITY, with_labels=False)
    assert len(unlabelled) == 2 and unlabelled[0].label is None
    shutil.rmtree(root / "rgb_anon" / "snow")  # an incomplete download
    with pytest.raises(DatasetLayoutError, match="ACDC folder .*snow/train not found"):
        ACDC(root, "all", "train", IDENTITY)


def test_acdc_merged_layout(tmp_path: Path) -> None:
    root = acdc_root(tmp_path, merged=True)
    merged = ACDC(root, "all", "train", IDENTITY)
    assert len(merged) == 8 and merged[0].name.startswith("train/GOPR04")
    with pytest.raises(DatasetLayoutError, match="merged into rgb_anon/train/.*condition all"):
        ACDC(root, "fog", "train", IDENTITY)


def test_acdc_labels_must_be_trainids(tmp_path: Path) -> None:
    root = acdc_root(tmp_path)
    label = sorted((root / "gt").rglob("*_gt_labelTrainIds.png"))[0]
    write_label(label, 33)
    with pytest.raises(LabelFormatError, match=f"{label.name} holds \\[33\\]"):
        ACDC(root, "fog", "train", IDENTITY)[0]


def test_dark_zurich_night_target_and_val(tmp_path: Path) -> None:
    root = tmp_path / "Dark_Zurich"
    for condition in ("night", "day"):
        for frame in range(3):
            seq = "GOPR0094" if condition == "night" else "GOPR0122"
            write_image(
                root
                / "rgb_anon"
                / "train"
                / condition
                / seq
                / f"{seq}_frame_00{frame}_rgb_anon.png"
            )
    for frame in range(2):
        name = f"GOPR0356_frame_00032{frame}"
        write_image(root / "rgb_anon" / "val" / "night" / "GOPR0356" / f"{name}_rgb_anon.png")
        write_label(root / "gt" / "val" / "night" / "GOPR0356" / f"{name}_gt_labelTrainIds.png",
                    stripes([8, 10, 255]))  # fmt: skip
    target = DarkZurich(root, "night", "train", IDENTITY, with_labels=False)
    assert len(target) == 3 and all("night/GOPR0094" in name for _, _, name in target.items)
    val = DarkZurich(root, "night", "val", IDENTITY)
    assert len(val) == 2 and set(torch.unique(val[0].label).tolist()) == {8, 10, 255}
    with pytest.raises(MissingFileError, match="gt/train/night/GOPR0094/.*_gt_labelTrainIds.png"):
        DarkZurich(root, "night", "train", IDENTITY)


def crosscity_root(tmp_path: Path) -> Path:
    """Rome: 3 train images (jpg and png), 2 test images with label-id labels."""
    root = tmp_path / "NTHU_Datasets"
    for i, ext in enumerate((".jpg", ".jpg", ".png")):
        write_image(root / "Rome" / "Images" / "Train" / f"pano_0000{i}_0_0{ext}")
    for i in range(2):
        write_image(root / "Rome" / "Images" / "Test" / f"pano_0036{i}_0_180.png")
        ids = stripes([7, 8, 11, 19, 20, 21, 23, 24, 25, 26, 28, 32, 33, 0])  # + unlabelled 0
        write_label(root / "Rome" / "Labels" / "Test" / f"pano_0036{i}_0_180_eval.png", ids)
    return root


def test_crosscity_cities_lists_and_13_classes(tmp_path: Path) -> None:
    root = crosscity_root(tmp_path)
    train = CrossCity(root, "Rome", "train", IDENTITY, with_labels=False)
    assert [n for _, _, n in train.items] == ["pano_00000_0_0.jpg", "pano_00001_0_0.jpg",
                                              "pano_00002_0_0.png"]  # fmt: skip
    test = CrossCity(root, "Rome", "test", IDENTITY)
    classes = set(torch.unique(test[0].label).tolist()) - {IGNORE_INDEX}
    assert classes == set(SYNTHIA_13)  # the label ids of the 13 classes, as trainIds
    assert [LABEL_IDS[c] for c in sorted(classes)] == [
        7,
        8,
        11,
        19,
        20,
        21,
        23,
        24,
        25,
        26,
        28,
        32,
        33,
    ]
    # MaxSquare's list files name images without their extension; others with it.
    (tmp_path / "train.txt").write_text("pano_00002_0_0\npano_00000_0_0.jpg\n")
    listed = CrossCity(
        root, "Rome", "train", IDENTITY, list_file=tmp_path / "train.txt", with_labels=False
    )
    assert [n for _, _, n in listed.items] == ["pano_00002_0_0.png", "pano_00000_0_0.jpg"]
    (tmp_path / "bad.txt").write_text("pano_09999_0_0\n")
    with pytest.raises(MissingFileError, match=r"bad.txt:1: entry 'pano_09999_0_0'"):
        CrossCity(
            root, "Rome", "train", IDENTITY, list_file=tmp_path / "bad.txt", with_labels=False
        )
    with pytest.raises(DatasetLayoutError, match="Tokyo/Images/Train not found"):
        CrossCity(root, "Tokyo", "train", IDENTITY)


def test_benchmark_sections_are_checked_at_load_time() -> None:
    cases = {
        ("data.target.dataset=acdc",): "data.target.condition: expected one of fog, night",
        ("data.target.dataset=acdc", "data.target.condition=fog", "data.target.split=tain"):
            "data.target.split: expected one of train, val, test",
        ("data.val.dataset=acdc", "data.val.condition=fog", "data.val.split=test"):
            "acdc has labels for train and val only",
        ("data.val.dataset=darkzurich", "data.val.condition=day", "data.val.split=val"):
            "darkzurich has labels for val/night only.*condition 'day'",
        ("data.val.dataset=crosscity", "data.val.city=Rome", "data.val.split=train"):
            "crosscity has labels for test only",
        ("data.target.dataset=crosscity", "data.target.city=Paris"):
            "data.target.city: expected one of Rome, Rio, Tokyo, Taipei",
        ("data.target.city=Rome",): "city='Rome': dataset cityscapes has no city to choose",
    }  # fmt: skip
    for overrides, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config(None, overrides)


def test_benchmarks_build_from_their_configs(tmp_path: Path) -> None:
    acdc, cross = acdc_root(tmp_path), crosscity_root(tmp_path)
    paths = [f"data.target.root={acdc}", f"data.val.root={acdc}", "data.target.condition=fog"]
    cfg = load_config(CONFIGS / "cityscapes_to_acdc" / "source_only.yaml", paths)
    assert len(build_dataset(cfg.data.target, with_labels=False)) == 2  # fog
    assert len(build_dataset(cfg.data.val, evaluation=True)) == 8  # all four
    cfg = load_config(CONFIGS / "cityscapes_to_crosscity" / "source_only.yaml", [
        f"data.target.root={cross}", f"data.val.root={cross}", "data.target.city=Rome",
        "data.val.city=Rome"])  # fmt: skip
    assert cfg.eval.classes == (13,)
    assert len(build_dataset(cfg.data.val, evaluation=True)) == 2


def test_shipped_cityscapes_label_map_is_the_label_table() -> None:
    lut = read_label_map(
        Path(__file__).resolve().parent.parent / "dataset/label_maps/cityscapes.yaml"
    )
    assert (lut == ID_TO_TRAIN_ID).all()


# --- the night demo: a folder-layout target, trained, evaluated and predicted -----------------


def test_night_demo_trains_evaluates_and_predicts(tmp_path: Path) -> None:
    root = tmp_path / "data"
    data = [f"data.synthetic.root={root}", "data.synthetic.num_train=4",
            "data.synthetic.num_night=4", "data.synthetic.num_night_val=2",
            "data.synthetic.target_size=[192,96]", f"data.source.root={root}/Cityscapes",
            f"data.target.root={root}/Night/frames", f"data.val.root={root}/Night/val/images",
            f"data.val.label_root={root}/Night/val/labels"]  # fmt: skip
    args = ["--config", str(CONFIGS / "demo" / "night" / "norm_only.yaml"), *TINY_TRAIN, *data,
            "train.device=cpu", f"train.out_dir={tmp_path}", "train.run_name=r",
            "train.max_steps=2", "data.target.crop=null"]  # fmt: skip
    assert train_norm_only.main(args) == 0
    frames = sorted((root / "Night" / "frames").rglob("*.jpg"))
    assert [p.relative_to(root).as_posix() for p in frames][0] == "Night/frames/drive_00/000000.jpg"
    labels = [np.asarray(Image.open(p)) for p in sorted((root / "Night/val/labels").glob("*.png"))]
    assert len(labels) == 2 and all(set(np.unique(x)) <= {*range(19), 255} for x in labels)
    results = (tmp_path / "r" / "results.json").read_text()
    assert '"mIoU"' in results
    ckpt = str(tmp_path / "r" / "checkpoints" / "last.pth")
    assert evaluate_cityscapes.main(["--restore", ckpt, "--save-dir", str(tmp_path / "ev")]) == 0
    out = tmp_path / "pred"
    assert predict.main(["--restore", ckpt, "--input", str(root / "Night" / "frames"),
                         "--out", str(out), "--alpha", "0.4"]) == 0  # fmt: skip
    assert len(list((out / "overlay").rglob("*.png"))) == 4
    legend = np.asarray(Image.open(out / "legend.png").convert("RGB"))
    colours = {tuple(c) for c in legend.reshape(-1, 3)}
    assert set(PALETTE) <= colours  # a swatch of every class
