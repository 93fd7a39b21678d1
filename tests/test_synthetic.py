"""The built-in synthetic benchmark: layout, formats, coverage, determinism, reuse, the CLI and
the gap between its two domains."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dataset.synthetic as synthetic
import dataset.synthetic.writer as writer
from dataset.labels import CLASS_NAMES, ID_TO_TRAIN_ID, LABEL_IDS, NUM_CLASSES, PALETTE
from dataset.synthetic import SyntheticSpec, ensure_synthetic, generate, main, render

SPEC = SyntheticSpec(
    seed=3, num_source=4, num_train=5, num_val=4, source_size=(120, 66), target_size=(128, 64)
)
CITYSCAPES_NAME = re.compile(r"([a-z]+)_(\d{6})_(\d{6})_leftImg8bit\.png")
IGNORED_IDS = {0, 1, 3, 4}  # unlabeled, ego vehicle, out of roi, static


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synthetic") / "data", SPEC, progress=False)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _read(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
    return image


def _label_ids(path: Path) -> np.ndarray:
    return np.asarray(_read(path))


def test_layout_and_file_formats(root: Path) -> None:
    assert sorted(p.name for p in root.parent.iterdir()) == ["data"]  # no temporary leftovers
    names = [f"{i:05d}.png" for i in range(1, SPEC.num_source + 1)]
    assert sorted(p.name for p in (root / "GTA5/images").iterdir()) == names
    assert sorted(p.name for p in (root / "GTA5/labels").iterdir()) == names
    for name in names:
        image = _read(root / "GTA5/images" / name)
        label = _read(root / "GTA5/labels" / name)
        assert (image.mode, image.size) == ("RGB", SPEC.source_size)
        assert (label.mode, label.size) == ("P", SPEC.source_size)
        palette = label.getpalette()
        road = LABEL_IDS[CLASS_NAMES.index("road")]
        assert tuple(palette[3 * road : 3 * road + 3]) == PALETTE[CLASS_NAMES.index("road")]
    for split, count, cities in (
        ("train", SPEC.num_train, synthetic.TRAIN_CITIES),
        ("val", SPEC.num_val, synthetic.VAL_CITIES),
    ):
        images = sorted((root / "Cityscapes/leftImg8bit" / split).glob("*/*"))
        labels = sorted((root / "Cityscapes/gtFine" / split).glob("*/*"))
        assert len(images) == len(labels) == count
        for image_path, label_path in zip(images, labels):
            match = CITYSCAPES_NAME.fullmatch(image_path.name)
            assert match is not None and match.group(1) == image_path.parent.name
            assert image_path.parent.name in cities
            assert label_path.name == image_path.name.replace("leftImg8bit", "gtFine_labelIds")
            assert label_path.parent.name == image_path.parent.name
            image, label = _read(image_path), _read(label_path)
            assert (image.mode, image.size) == ("RGB", SPEC.target_size)
            assert (label.mode, label.size) == ("L", SPEC.target_size)
    manifest = json.loads((root / "synthetic.json").read_text())
    assert manifest == {
        "format_version": synthetic.FORMAT_VERSION,
        "seed": 3,
        "num_source": 4,
        "num_train": 5,
        "num_val": 4,
        "source_size": [120, 66],
        "target_size": [128, 64],
    }


def test_labels_hold_cityscapes_ids_with_some_ignored(root: Path) -> None:
    valid = set(LABEL_IDS) | IGNORED_IDS
    source = [_label_ids(p) for p in sorted((root / "GTA5/labels").iterdir())]
    target = [_label_ids(p) for p in sorted((root / "Cityscapes/gtFine").glob("*/*/*.png"))]
    for ids in source + target:
        assert set(np.unique(ids).tolist()) <= valid
        assert (ID_TO_TRAIN_ID[ids] < NUM_CLASSES).mean() > 0.8
    assert set(np.unique(np.concatenate([a.ravel() for a in source])).tolist()) & IGNORED_IDS
    for ids in target:  # the ego vehicle and the out-of-roi border, as in Cityscapes
        assert {1, 3} <= set(np.unique(ids).tolist())
        assert (ids[-1] == 3).all()


@pytest.mark.parametrize(
    ("domain", "split", "size"),
    [("source", "all", (480, 264)), ("target", "train", (512, 256))],
)
def test_every_class_is_common_enough(domain: str, split: str, size: tuple[int, int]) -> None:
    present, pixels = np.zeros(NUM_CLASSES), np.zeros(NUM_CLASSES + 1)
    for index in range(40):
        train_ids = ID_TO_TRAIN_ID[render(0, domain, split, index, size)[1]]
        counts = np.bincount(np.minimum(train_ids, NUM_CLASSES).ravel(), minlength=NUM_CLASSES + 1)
        present += counts[:NUM_CLASSES] > 0
        pixels += counts
    fraction = pixels[:NUM_CLASSES] / pixels.sum()
    for k, name in enumerate(CLASS_NAMES):
        assert present[k] >= 0.2 * 40, f"{name} in only {present[k]:.0f} of 40 images"
        assert fraction[k] >= 0.0005, f"{name} covers only {fraction[k]:.5f} of the pixels"


def test_label_map_is_aligned_with_the_image() -> None:
    # Source images are flat-shaded: every label boundary is a colour boundary.
    for index in range(3):
        rgb, ids = render(0, "source", "all", index, (240, 132))
        for axis in (0, 1):
            boundary = np.diff(ids.astype(int), axis=axis) != 0
            colour_change = (np.diff(rgb.astype(int), axis=axis) != 0).any(-1)
            assert colour_change[boundary].mean() > 0.97


def test_same_seed_same_bytes_and_images_independent_of_counts(tmp_path: Path) -> None:
    small = dataclasses.replace(SPEC, num_source=2, num_train=2, num_val=1)
    a = _hashes(generate(tmp_path / "a", small, progress=False))
    b = _hashes(generate(tmp_path / "b", small, progress=False))
    assert a == b
    more = _hashes(generate(tmp_path / "more", dataclasses.replace(small, num_train=3), False))
    assert all(more[name] == digest for name, digest in a.items() if name != "synthetic.json")
    other = _hashes(generate(tmp_path / "c", dataclasses.replace(small, seed=4), False))
    assert all(other[name] != digest for name, digest in a.items())


def test_ensure_synthetic_reuses_a_matching_dataset(root: Path, capsys) -> None:
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert ensure_synthetic(root, SPEC) == root
    assert not re.search(r"\d+%\|", capsys.readouterr().err)  # nothing written, no bar
    assert generate(root, SPEC, progress=False) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_ensure_synthetic_names_the_differing_fields(root: Path) -> None:
    with pytest.raises(FileExistsError) as err:
        ensure_synthetic(root, dataclasses.replace(SPEC, seed=4, num_val=7))
    message = str(err.value)
    assert str(root / "synthetic.json") in message
    assert "seed: 3 on disk, 4 requested" in message and "num_val" in message
    assert "num_train" not in message


def test_ensure_synthetic_generates_when_absent(tmp_path: Path, capsys) -> None:
    spec = dataclasses.replace(SPEC, num_source=1, num_train=2, num_val=1)
    out = ensure_synthetic(tmp_path / "nested" / "data", spec)
    assert json.loads((out / "synthetic.json").read_text())["num_val"] == 1
    # first use shows a bar over the images of each domain and split, run to its end
    done = re.findall(r"(synthetic [a-z ]+): 100%\|.*?\| (\d+)/(\d+) ", capsys.readouterr().err)
    assert done == [("synthetic source", "1", "1"), ("synthetic target train", "2", "2"),
                    ("synthetic target val", "1", "1")]  # fmt: skip


def test_generate_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path / "data"))):
        generate(tmp_path / "data", SPEC, progress=False)


def test_the_command_line_refuses_a_foreign_folder_in_one_line(tmp_path: Path, capsys) -> None:
    from utils.errors import run

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("the user's\n")
    assert run(main, ["--out", str(tmp_path / "data"), "--num-train", "1"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'data'} exists but is not")
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["mine.txt"]


def test_interrupted_generation_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def failing_render(*args: object) -> tuple[np.ndarray, np.ndarray]:
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return render(*args)

    monkeypatch.setattr(writer, "render", failing_render)  # where generate looks it up
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "data", SPEC, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_spec_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="num_train"):
        SyntheticSpec(num_train=-1)
    with pytest.raises(ValueError, match="target_size"):
        SyntheticSpec(target_size=(16, 8))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--seed", "5", "--num-train", "2", "--num-val", "1"]
    argv += ["--num-source", "2", "--source-size", "96", "52", "--target-size", "96", "48"]
    assert main(argv) == 0
    assert str(out) in capsys.readouterr().out
    manifest = json.loads((out / "synthetic.json").read_text())
    assert manifest["seed"] == 5 and manifest["target_size"] == [96, 48]
    assert _read(out / "GTA5/images/00002.png").size == (96, 52)


def _domain_statistics(domain: str, split: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Class frequencies, per-class mean colours and how often two neighbouring pixels of one
    class have the very same colour (flat shading), over 16 images of 256x128."""
    counts, sums, flat = np.zeros(NUM_CLASSES), np.zeros((NUM_CLASSES, 3)), []
    for index in range(16):
        rgb, ids = render(0, domain, split, index, (256, 128))
        train_ids = ID_TO_TRAIN_ID[ids].astype(int)
        valid = train_ids < NUM_CLASSES
        counts += np.bincount(train_ids[valid], minlength=NUM_CLASSES)
        for channel in range(3):
            sums[:, channel] += np.bincount(
                train_ids[valid], rgb[..., channel][valid], minlength=NUM_CLASSES
            )
        same = (train_ids[:, 1:] == train_ids[:, :-1]) & valid[:, 1:]
        flat.append((rgb[:, 1:] == rgb[:, :-1]).all(-1)[same].mean())
    return counts / counts.sum(), sums / counts[:, None], float(np.mean(flat))


def test_domains_share_layout_but_not_appearance() -> None:
    source_freq, source_colour, source_flat = _domain_statistics("source", "all")
    target_freq, target_colour, target_flat = _domain_statistics("target", "train")
    assert 0.5 * np.abs(source_freq - target_freq).sum() < 0.12
    distance = np.linalg.norm(source_colour - target_colour, axis=1)
    assert distance.mean() > 30.0
    for name in ("sky", "vegetation", "car", "sidewalk"):
        assert distance[CLASS_NAMES.index(name)] > 25.0, name
    assert source_flat > 0.8 and target_flat < 0.1  # flat shading versus texture and noise


# --- the SYNTHIA-layout source ---------------------------------------------------------------

SYNTHIA_SPEC = dataclasses.replace(
    SPEC, num_source=0, num_train=1, num_val=1, num_synthia=3, synthia_size=(120, 72)
)
SYNTHIA_IDS = {3, 4, 2, 21, 5, 7, 15, 9, 6, 1, 10, 17, 8, 19, 12, 11}  # its 16 classes' ids
ABSENT = [CLASS_NAMES.index(n) for n in ("terrain", "truck", "train")]


@pytest.fixture(scope="module")
def synthia_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synthia") / "data", SYNTHIA_SPEC, progress=False)


def test_synthia_layout_and_16_bit_labels(synthia_root: Path) -> None:
    import cv2

    names = [f"{i:07d}.png" for i in range(3)]
    assert sorted(p.name for p in (synthia_root / "SYNTHIA/RGB").iterdir()) == names
    assert sorted(p.name for p in (synthia_root / "SYNTHIA/GT/LABELS").iterdir()) == names
    assert not (synthia_root / "GTA5").exists()
    for name in names:
        image = _read(synthia_root / "SYNTHIA/RGB" / name)
        assert (image.mode, image.size) == ("RGB", (120, 72))
        raw = cv2.imread(str(synthia_root / "SYNTHIA/GT/LABELS" / name), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16 and raw.shape == (72, 120, 3)
        red, green, blue = raw[..., 2], raw[..., 1], raw[..., 0]  # OpenCV's BGR
        assert set(np.unique(red).tolist()) <= SYNTHIA_IDS | {0}
        assert (blue == 0).all() and (green[red > 0] == 1000 + red[red > 0]).all()
        assert (red > 0).mean() > 0.95
    manifest = json.loads((synthia_root / "synthetic.json").read_text())
    assert manifest["num_synthia"] == 3 and manifest["synthia_size"] == [120, 72]
    assert manifest["synthia_format_version"] == synthetic.SYNTHIA_FORMAT_VERSION


def test_synthia_labels_are_the_rendered_classes_in_synthia_ids(synthia_root: Path) -> None:
    from dataset.datasets import SYNTHIA
    from dataset.transforms import PairedTransform, TransformSpec

    data = SYNTHIA(synthia_root / "SYNTHIA", PairedTransform(TransformSpec()))
    for index in range(3):
        _, ids = render(SYNTHIA_SPEC.seed, "synthia", "all", index, SYNTHIA_SPEC.synthia_size)
        assert np.array_equal(data[index].label.numpy(), ID_TO_TRAIN_ID[ids])


def test_synthia_has_its_classes_and_not_terrain_truck_train() -> None:
    present, pixels = np.zeros(NUM_CLASSES), np.zeros(NUM_CLASSES + 1)
    for index in range(40):
        train_ids = ID_TO_TRAIN_ID[render(0, "synthia", "all", index, (240, 144))[1]]
        counts = np.bincount(np.minimum(train_ids, NUM_CLASSES).ravel(), minlength=NUM_CLASSES + 1)
        present += counts[:NUM_CLASSES] > 0
        pixels += counts
    assert (present[ABSENT] == 0).all()
    for k, name in enumerate(CLASS_NAMES):
        if k not in ABSENT:
            assert present[k] >= 0.2 * 40, f"{name} in only {present[k]:.0f} of 40 images"
    assert pixels[NUM_CLASSES] / pixels.sum() < 0.01  # no bonnet: almost nothing ignored


def test_synthia_viewpoint_and_style_differ_from_the_gta5_source() -> None:
    gta_freq, gta_colour, _ = _domain_statistics("source", "all")
    with np.errstate(invalid="ignore"):  # no terrain, truck, train: their mean colour is NaN
        _, syn_colour, syn_flat = _domain_statistics("synthia", "all")
    shared = [k for k in range(NUM_CLASSES) if k not in ABSENT and gta_freq[k] > 0.001]
    distance = np.linalg.norm(gta_colour[shared] - syn_colour[shared], axis=1)
    assert distance.mean() > 40.0  # another palette
    assert syn_flat > 0.8  # rendered, flat-shaded

    def horizon(domain: str) -> float:
        """The mean first row of road or sidewalk, as a fraction of the height."""
        rows = []
        for index in range(16):
            ground = np.isin(ID_TO_TRAIN_ID[render(0, domain, "all", index, (256, 128))[1]], [0, 1])
            rows.append(np.flatnonzero(ground.any(1))[0] / 128)
        return float(np.mean(rows))

    assert horizon("synthia") < horizon("source") - 0.05  # a higher camera looking down


def test_synthia_source_leaves_the_other_files_and_old_manifests_alone(tmp_path: Path) -> None:
    small = dataclasses.replace(SPEC, num_source=1, num_train=1, num_val=1)
    plain = _hashes(generate(tmp_path / "plain", small, progress=False))
    both = _hashes(generate(tmp_path / "both", dataclasses.replace(small, num_synthia=1), False))
    assert all(both[name] == digest for name, digest in plain.items() if name != "synthetic.json")
    assert {"SYNTHIA/RGB/0000000.png", "SYNTHIA/GT/LABELS/0000000.png"} < set(both)
    manifest = json.loads((tmp_path / "plain" / "synthetic.json").read_text())
    assert not {"num_synthia", "synthia_size", "synthia_format_version"} & set(manifest)


def test_cli_writes_a_synthia_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--num-source", "0", "--num-train", "1", "--num-val", "1",
            "--num-synthia", "2", "--synthia-size", "64", "38"]  # fmt: skip
    assert main(argv) == 0
    assert _read(out / "SYNTHIA/RGB/0000001.png").size == (64, 38)
    assert json.loads((out / "synthetic.json").read_text())["num_synthia"] == 2
