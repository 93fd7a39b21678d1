"""predict.py on a folder of mixed sizes and formats with one corrupt file: every good image
segmented at its own size exactly as evaluation would, the corrupt one listed, exit status 1."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from conftest import TINY_MODEL
from PIL import Image

import predict
from dataset.labels import colorize
from dataset.transforms import normalize
from model.deeplabv2 import DeepLabV2
from utils.config import load_config, to_dict
from utils.errors import OutputExistsError, UsageError
from utils.evaluation.inference import predict_scores

TINY = [*TINY_MODEL, "data.val.resize=[64,32]", "train.device=cpu"]
# relative path -> (W, H, PIL mode) of the good images
GOOD = {
    "a.png": (50, 40, "RGB"),
    "b.jpg": (71, 33, "RGB"),
    "grey.png": (20, 30, "L"),
    "rgba.png": (45, 45, "RGBA"),
    "nested/deeper/c.bmp": (64, 32, "RGB"),
    "nested/d.webp": (37, 52, "RGB"),
}


@pytest.fixture(scope="module")
def model_and_ckpt(tmp_path_factory):
    """A seeded tiny G in eval mode and this repository's checkpoint of it."""
    torch.manual_seed(0)
    model = DeepLabV2(layers=(1, 1, 1, 1), base_width=8).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    cfg = to_dict(load_config(None, TINY))
    torch.save({"setup": "norm_only", "step": 1, "models": {"G": model.state_dict(), "D": {}},
                "optimizers": {}, "config": cfg, "metric": None}, path)  # fmt: skip
    return model, path


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for name, (w, h, mode) in GOOD.items():
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8).squeeze()
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode).save(root / name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image: skipped, not an error\n")
    return root


def reference(model, path, flip=False):
    """The trainIds evaluation would give: resize to 64x32 (bicubic), logits upsampled to the
    image's size, argmax."""
    rgb = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    x = normalize(TF.resize(rgb, [32, 64], TF.InterpolationMode.BICUBIC, antialias=True))
    space = "prob" if flip else "logit"
    scores = predict_scores(model, x[None], tuple(rgb.shape[-2:]), flip=flip, space=space)
    return scores[0].argmax(0).numpy()


def test_a_mixed_folder_with_a_corrupt_file(tmp_path, photos, model_and_ckpt, capsys):
    model, ckpt = model_and_ckpt
    out = tmp_path / "out"
    args = ["--restore", str(ckpt), "--input", str(photos), "--out", str(out), "--alpha", "0.25"]
    assert predict.main(args) == predict.EXIT_UNREADABLE == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "1 of 7 files could not be read" in err and "broken.jpg" in err
    assert "notes.txt" not in err  # not an error: logged
    assert "skipping 1 file that is not an image by its extension: notes.txt" in captured.out
    for name, (w, h, _) in GOOD.items():
        stem = name.rsplit(".", 1)[0]
        ids = np.array(Image.open(out / f"{stem}.png"))
        assert ids.shape == (h, w) and ids.max() < 19
        np.testing.assert_array_equal(ids, reference(model, photos / name))
        colour = np.array(Image.open(out / "color" / f"{stem}.png"))
        np.testing.assert_array_equal(colour, colorize(ids))
        image = np.array(Image.open(photos / name).convert("RGB")).astype(np.float64)
        blend = np.array(Image.open(out / "overlay" / f"{stem}.png")).astype(np.float64)
        assert np.abs(blend - (0.75 * image + 0.25 * colorize(ids))).max() <= 0.5 + 1e-9
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert len(written) == 3 * len(GOOD) + 1 and not any("broken" in p for p in written)
    assert "legend.png" in written  # once per run, a swatch of each class the model predicts
    assert len(set(np.unique(np.array(Image.open(out / "a.png"))))) > 1  # not a constant map

    # existing outputs are kept unless --overwrite
    with pytest.raises(OutputExistsError, match="--out .* already holds 18 of this run's files"):
        predict.main(args)
    assert predict.main([*args, "--overwrite"]) == 1


@pytest.mark.parametrize(
    ("others", "message"),
    [
        ([], None),
        (["notes.txt"], "skipping 1 file that is not an image by its extension: notes.txt"),
        (["notes.txt", "b/c.json"],
         "skipping 2 files that are not images by their extension: b/c.json, notes.txt"),
        ([f"d{i}.csv" for i in range(7)],
         "skipping 7 files that are not images by their extension: d0.csv, d1.csv, d2.csv, "
         "d3.csv, d4.csv and 2 more"),
    ],
    ids=["none", "one", "two", "seven"],
)  # fmt: skip
def test_the_files_that_are_not_images_are_named(tmp_path, caplog, others, message):
    """The log names the skipped files (the first five by path, then how many more), in a
    sentence whose plural follows their number; no line when there are none."""
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")
    for name in others:
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_text("not an image")
    with caplog.at_level("INFO", logger="predict"):
        assert predict.input_images(root, tmp_path / "out") == [root / "a.png"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert lines == ([] if message is None else [message])


def test_flip_exif_and_a_clean_folder(tmp_path, model_and_ckpt):
    model, ckpt = model_and_ckpt
    photos = tmp_path / "photos"
    photos.mkdir()
    pixels = np.random.default_rng(1).integers(0, 256, (30, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photos / "wide.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated by 90 degrees
    Image.fromarray(pixels).save(photos / "phone.jpg", exif=exif)
    out = tmp_path / "out"
    args = ["--restore", str(ckpt), "--input", str(photos), "--out", str(out), "--flip",
            "--device", "cpu"]  # fmt: skip
    assert predict.main(args) == 0
    flipped = np.array(Image.open(out / "wide.png"))
    np.testing.assert_array_equal(flipped, reference(model, photos / "wide.png", flip=True))
    assert Image.open(out / "phone.png").size == (30, 60)  # upright: W and H swapped


def test_bad_input(tmp_path, photos, model_and_ckpt, capsys):
    _, ckpt = model_and_ckpt
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.md").write_text("no images here\n")
    base = ["--restore", str(ckpt), "--out", str(tmp_path / "out")]
    with pytest.raises(UsageError, match="no images"):
        predict.main([*base, "--input", str(empty)])
    with pytest.raises(UsageError, match="not a folder"):
        predict.main([*base, "--input", str(tmp_path / "absent")])
    Image.new("RGB", (8, 8)).save(photos / "a.jpg")  # a.png is there too
    with pytest.raises(
        UsageError, match=r"a\.jpg and .*a\.png would both be written to .*out/a\.png"
    ):
        predict.main([*base, "--input", str(photos)])
    with pytest.raises(SystemExit):
        predict.main([*base, "--input", str(photos), "--alpha", "1.5"])
    assert "--alpha" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
