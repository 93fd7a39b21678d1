"""PNGs and figures are written atomically: a write killed midway leaves the file that was
there and no temporary file; a write that completes gives the bytes of a direct save."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset.labels import NUM_CLASSES
from utils.analysis import plots
from utils.evaluation.predictions import save_prediction
from utils.files import save_png

IOUS = {"a": [0.5] * NUM_CLASSES, "b": [0.25] * NUM_CLASSES}


def _png_writes_die_midway(monkeypatch) -> None:
    """From now on PIL's PNG encoder (which matplotlib's PNGs go through too) writes a few
    bytes, then Ctrl-C (or a kill) arrives."""

    def dies_midway(image, fp, filename, *args, **kwargs):
        fp.write(b"\x89PNG partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setitem(Image.SAVE, "PNG", dies_midway)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_an_interrupted_prediction_png_keeps_the_previous_file(tmp_path, monkeypatch):
    pred = np.arange(12, dtype=np.uint8).reshape(3, 4)
    save_prediction(pred, "city/a.png", tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)}
    _png_writes_die_midway(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save_prediction(pred[::-1].copy(), "city/a.png", tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)} == before


def test_an_interrupted_figure_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "iou.png"
    plots.iou_comparison(path, IOUS, "a")
    before = path.read_bytes()
    _png_writes_die_midway(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        plots.iou_comparison(path, IOUS, "b")
    assert path.read_bytes() == before
    assert _files(tmp_path) == ["iou.png"]  # no temporary file left


def test_a_png_is_the_bytes_of_a_direct_save(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "direct.png")
    save_png(rgb, tmp_path / "atomic.png")
    assert (tmp_path / "atomic.png").read_bytes() == (tmp_path / "direct.png").read_bytes()
    assert (tmp_path / "atomic.png").stat().st_mode == (tmp_path / "direct.png").stat().st_mode
    assert _files(tmp_path) == ["atomic.png", "direct.png"]


def test_a_figure_is_the_bytes_of_a_direct_save(tmp_path):
    _line_plot().savefig(tmp_path / "direct.png", dpi=100)
    plots._save(_line_plot(), tmp_path / "atomic.png")
    assert (tmp_path / "atomic.png").read_bytes() == (tmp_path / "direct.png").read_bytes()
    # The format its suffix names, as savefig(path) infers it: the temporary file's is .tmp.
    plots._save(_line_plot(), tmp_path / "figure.pdf")
    assert (tmp_path / "figure.pdf").read_bytes().startswith(b"%PDF")
    assert _files(tmp_path) == ["atomic.png", "direct.png", "figure.pdf"]


def _line_plot():
    """A new figure each time: a figure saved again can differ from its first save (the
    constrained layout moves once more), and a script saves each figure once."""
    fig, axes = plots._figure(1, 1, (2.0, 1.5))
    axes[0][0].plot([0, 1], [1, 0])
    return fig
