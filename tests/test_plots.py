"""Plots people look at: the ROC PNG (counts, colours, band, legend, axis titles clear of the
ticks) and the `data inspect` montage (named views, orientation marks, window, spacing, a
sagittal cut through a lung)."""

from __future__ import annotations

import re
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from covidzoo.data.montage import montage
from covidzoo.data.volume import Volume
from covidzoo.errors import BadInputError
from covidzoo.evaluation import EnsembleReport, EvalReport, Threshold
from covidzoo.metrics import binary_report, bootstrap_ci, bootstrap_roc_band
from covidzoo.plots import BAND, BAND_ALPHA, HIGHLIGHT, PALETTE, Curve, save_roc_png


@pytest.fixture
def texts(monkeypatch):
    """Every string drawn on a picture, in order."""
    drawn: list[str] = []
    original = ImageDraw.ImageDraw.text

    def record(self, xy, text, *args, **kwargs):
        drawn.append(text)
        return original(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    return drawn


def count(image: Image.Image, color: tuple[int, int, int]) -> int:
    return int((np.asarray(image.convert("RGB")) == color).all(axis=-1).sum())


def scores(n: int = 40, seed: int = 0, noise: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % 2
    return labels, labels + np.random.default_rng(seed).normal(0, noise, n)


def test_ensemble_roc_members_in_distinct_colours_best_first(tmp_path, texts):
    labels = scores()[0]
    members = [Curve.from_scores(f"model {i}", labels, scores(seed=i, noise=0.5 + 0.4 * i)[1])
               for i in range(3)]
    fused = Curve.from_scores("fusion", labels, scores(seed=9, noise=0.3)[1], highlight=True)
    path = save_roc_png(tmp_path / "out" / "roc.png", [*members, fused],
                        operating_point=(0.2, 0.8), size=480, operating_label="threshold 0.5")
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (480, 480)
    assert [p.name for p in path.parent.iterdir()] == ["roc.png"]  # no temporary file left
    assert count(image, HIGHLIGHT) > 600  # the thick black fusion (and frame, text)
    for color in PALETTE[:3]:  # one colour per member
        assert count(image, color) > 100
    assert "n = 40 scans: 20 covid, 20 non-covid" in texts
    legend = [t for t in texts if "AUC" in t]
    assert legend[0].startswith("fusion: AUC")
    aucs = [float(re.search(r"AUC (\d\.\d+)", t).group(1)) for t in legend[1:]]
    assert aucs == sorted(aucs, reverse=True) and len(aucs) == 3
    assert legend[1].endswith("(best member)") and "threshold 0.5" in texts


def test_more_members_than_colours_are_dashed(tmp_path):
    labels = scores()[0]
    members = [Curve.from_scores(f"m{i}", labels, scores(seed=i)[1]) for i in range(9)]
    image = Image.open(save_roc_png(tmp_path / "roc.png", members, size=320))
    assert all(count(image, color) > 0 for color in PALETTE)


def test_band_is_drawn_with_its_auc_interval(tmp_path, texts):
    labels, probs = scores(60)
    plain = Image.open(save_roc_png(tmp_path / "a.png",
                                    [Curve.from_scores("m", labels, probs, True)]))
    banded = Curve.from_scores("m", labels, probs, True, n_boot=200, seed=3)
    image = Image.open(save_roc_png(tmp_path / "b.png", [banded]))
    tint = tuple(round(255 + (c - 255) * BAND_ALPHA / 255) for c in BAND)
    assert count(image, tint) > 5000 > count(plain, tint)
    low, high = bootstrap_ci(labels, probs, 0.5, n_boot=200, seed=3)["auc"]
    assert f"m: AUC {banded.auc:.3f} (95% CI {low:.3f}-{high:.3f})" in texts
    assert "95% pointwise bootstrap band (200 resamples)" in texts


def test_y_axis_title_is_clear_of_the_tick_labels(tmp_path):
    path = save_roc_png(tmp_path / "roc.png", [Curve([0, 0, 1], [0, 1, 1], "perfect", 1.0, True)])
    pixels = np.asarray(Image.open(path).convert("L"))
    frame = int(np.argmax((pixels[320] < 60)[40:])) + 40  # the plot's left edge
    columns = np.flatnonzero((pixels[:, :frame - 2] < 200).any(axis=0))  # ink left of the plot
    title_end = columns[np.flatnonzero(np.diff(columns) > 1)[0]]
    assert title_end - columns[0] < 25  # the title is vertical: a narrow strip
    assert columns[columns > title_end].min() - title_end >= 8  # well apart from the ticks


def test_single_curve_up_the_left_axis(tmp_path):
    path = save_roc_png(tmp_path / "roc.png", [Curve([0, 0, 1], [0, 1, 1], "perfect", 1.0, True)],
                        title="perfect model")
    pixels = np.asarray(Image.open(path).convert("RGB"))
    frame = int(np.argmax((pixels[320] == 0).all(axis=-1)[40:])) + 40
    assert (pixels[150:500, frame:frame + 3] == HIGHLIGHT).all(axis=-1).all()


def test_bad_curves_are_refused(tmp_path):
    with pytest.raises(BadInputError, match="no ROC curve"):
        save_roc_png(tmp_path / "roc.png", [])
    with pytest.raises(BadInputError, match="as many FPR as TPR"):
        save_roc_png(tmp_path / "roc.png", [Curve([0, 1], [0], "bad")])
    assert not (tmp_path / "roc.png").exists()


def test_roc_band_matches_the_bootstrap_and_contains_the_curve():
    labels, probs = scores(80, noise=1.0)
    probs = np.round(probs, 1)  # ties
    band = bootstrap_roc_band(labels, probs, n_boot=300, seed=5)
    ci = bootstrap_ci(labels, probs, 0.5, n_boot=300, seed=5)
    assert band.auc == pytest.approx(ci["auc"]) and band.skipped == ci["skipped"]
    assert (band.low <= band.high).all() and band.low[-1] == band.high[-1] == 1.0
    curve = Curve.from_scores("m", labels, probs)
    middle = np.interp(band.fpr, curve.fpr, curve.tpr)
    assert ((band.low <= middle + 1e-9) & (middle <= band.high + 1e-9)).mean() > 0.9
    with pytest.raises(BadInputError, match="one class"):
        bootstrap_roc_band([1, 1], [0.2, 0.3])


def _report(cls, **given):
    """A report holding `given`, None for what its ROC plot does not read."""
    return cls(**{f.name: given.get(f.name) for f in fields(cls)
                  if f.init and f.default is MISSING and f.default_factory is MISSING})


def _eval_report(n_boot: int) -> EvalReport:
    labels, probs = scores(50)
    probs = 1 / (1 + np.exp(-probs))
    return _report(EvalReport, model=Path("runs/a/best.safetensors"), split="val",
                   labels=labels, probs=probs, threshold=Threshold(0.6, "checkpoint"),
                   metrics=binary_report(labels, probs, 0.6, n_boot=n_boot, seed=2))


def test_evaluate_roc_draws_the_band_of_its_bootstrap(tmp_path, texts):
    report = _eval_report(n_boot=150)
    Image.open(report.save_roc(tmp_path / "roc.png"))
    low, high = report.metrics["bootstrap"]["auc"]
    assert any(f"(95% CI {low:.3f}-{high:.3f})" in t for t in texts)
    assert "95% pointwise bootstrap band (150 resamples)" in texts
    assert "n = 50 scans: 25 covid, 25 non-covid" in texts
    assert any(t.startswith("threshold 0.6 (checkpoint): sensitivity") for t in texts)
    texts.clear()
    _eval_report(n_boot=0).save_roc(tmp_path / "plain.png")
    assert not any("band" in t for t in texts)


def test_ensemble_roc_names_members_and_fit_split(tmp_path, texts):
    labels, a = scores(40, seed=1)
    probs = np.stack([a, scores(40, seed=2, noise=2.0)[1]], axis=1)
    fused = probs.mean(axis=1)
    report = _report(EnsembleReport, method="mean", names=["a", "b"],
                     checkpoints=[Path("a/best.safetensors"), Path("b/best.safetensors")],
                     fit_split="val", split="val", labels=labels, probs=probs, fused=fused,
                     fusion=binary_report(labels, fused, 0.5), threshold=0.5,
                     estimate="in-sample", notes=[])
    report.save_roc(tmp_path / "roc.png")
    assert "mean fusion of 2 models on val" in texts
    assert any("optimistic" in t for t in texts)
    legend = [t for t in texts if ": AUC" in t]
    assert legend[0].startswith("mean fusion") and legend[1].startswith("a: AUC")
    assert "(best member)" in legend[1] and legend[2].startswith("b: AUC")


# --- the montage of `covidzoo data inspect --png` ----------------------------------------------


def _chest(shape: tuple[int, int, int] = (24, 64, 64)) -> np.ndarray:
    """Air, a body, two lungs and a spine between them, in HU (columns run patient right to
    left, rows anterior to posterior)."""
    d, h, w = shape
    y, x = np.mgrid[-1:1:h * 1j, -1:1:w * 1j]
    plane = np.full((h, w), -1000.0)
    plane[(y / 0.6) ** 2 + (x / 0.9) ** 2 <= 1] = 40.0
    for side in (-1, 1):
        plane[((x - side * 0.4) / 0.25) ** 2 + (y / 0.4) ** 2 <= 1] = -850.0
    plane[((y - 0.3) / 0.12) ** 2 + (x / 0.1) ** 2 <= 1] = 500.0
    return np.repeat(plane[None], d, axis=0).astype(np.float32)


def _phantom(kind: str = "dicom") -> Volume:
    hu = _chest()
    if kind == "slices":
        grey = np.clip((hu + 1350) / 1500, 0, 1) * 255
        return Volume(grey.astype(np.float32), (1.0, 1.0, 1.0), "scan", "slices",
                      intensity="uint8")
    return Volume(hu, (5.0, 2.5, 2.5), "scan", "dicom")


def test_montage_names_views_marks_orientation_window_and_spacing(texts):
    image = montage(_phantom())
    assert image.mode == "RGB" and image.width > image.height
    for word in ("axial", "coronal", "sagittal", "A", "P", "R", "L", "S", "I"):
        assert word in texts
    caption = "\n".join(texts)
    assert "window: level -600 HU, width 1500 HU" in caption
    assert "spacing 5 x 2.5 x 2.5 mm" in caption and "assumed" not in caption
    assert re.search(r"\b\d+ mm\b", caption)  # the scale bar


def test_montage_says_what_it_assumed_for_slice_images(texts):
    montage(_phantom("slices"))
    caption = "\n".join(texts)
    assert "spacing 1 x 1 x 1 mm (assumed: slice images carry no spacing)" in caption
    assert "window: none" in caption and "orientation" in caption and "(assumed" in caption


@pytest.mark.parametrize("kind", ["dicom", "slices"])
def test_montage_sagittal_cut_passes_through_a_lung(kind, texts):
    volume = _phantom(kind)
    montage(volume)
    column = int(re.search(r"column (\d+) of 64", "\n".join(texts)).group(1)) - 1
    hu = _chest()
    assert (hu[:, :, column] == -850).sum() > 100  # through a lung
    assert not (hu[:, :, column] == 500).any()  # not through the spine
