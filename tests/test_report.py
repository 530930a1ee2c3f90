"""The HTML report: escaped, self-contained (every image a data: URI, nothing fetched), written
atomically, laid out from a real `evaluate --json`, and loaded by a real browser (headless
Chromium) without a script error, a policy violation or a broken image."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from covidzoo.data import PreprocessConfig, load_scan
from covidzoo.errors import BadInputError
from covidzoo.metrics import binary_report
from covidzoo.multiclass_metrics import multiclass_report
from covidzoo.report import (
    Report,
    confusion_matrix_png,
    cv_report,
    evaluation_report,
    thumbnail_png,
    thumbnail_slice,
)

HOSTILE = "/data/<script>alert('x')</script>/\"scan\" & <b>1</b>"
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="the browser tests need headless Chromium: the `chromium` binary "
                             "(Debian package chromium) is not on PATH")


def png(width: int = 20, height: int = 10, value: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), value).save(buffer, format="PNG")
    return buffer.getvalue()


class Page(HTMLParser):
    """Every tag of a page with its attributes, and its text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for t, attrs in self.tags if t == tag]


def assert_self_contained(text: str) -> list[dict[str, str | None]]:
    """Every image a decodable PNG data: URI of its stated size, with alt text; no script,
    no link, no reference out of the file. The images."""
    page = Page(text)
    assert not page.all("script") and not page.all("link") and not page.all("iframe")
    for needle in ("http://", "https://", 'src="//', "href=\"//", "url("):
        assert needle not in text
    for tag, attrs in page.tags:
        for name in ("src", "href", "srcset", "action", "poster", "data"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith(("data:image/png;base64,", "#")), (tag, name, value[:60])
    images = page.all("img")
    for attrs in images:
        data = base64.b64decode(attrs["src"].removeprefix("data:image/png;base64,"),
                                validate=True)
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG"
            assert image.size == (int(attrs["width"]), int(attrs["height"]))
        assert attrs["alt"]
    return images


def binary_dict(labels=(0, 0, 1, 1, 1, 0), probs=(0.1, 0.7, 0.8, 0.35, 0.9, 0.3),
                threshold=0.5, **extra) -> dict:
    metrics = binary_report(np.array(labels), np.array(probs), threshold, n_boot=50)
    return {"model": "/runs/a/best.safetensors", "kind": "checkpoint",
            "members": ["/runs/a/best.safetensors"], "data": "/data/demo", "split": "test",
            "classes": ["non-covid", "covid"],
            "threshold": {"value": threshold, "source": "checkpoint",
                          "note": "chosen on validation data"},
            "metrics": metrics, "failed": [], "unlabelled": 0, "device": "cpu",
            "precision": ["fp32"], "timing": {"scans": len(labels)}, "notes": [], **extra}


def binary_scans(labels=(0, 0, 1, 1, 1, 0), probs=(0.1, 0.7, 0.8, 0.35, 0.9, 0.3)):
    names = ["non-covid", "covid"]
    return [{"path": f"/data/scan_{i}", "label": names[y], "probability": p,
             "predicted": names[int(p >= 0.5)], "thumbnail_png": png()}
            for i, (y, p) in enumerate(zip(labels, probs, strict=True))]


def rows_of(text: str, caption: str) -> list[list[str]]:
    """The cells' text of the table with `caption`, header row first."""
    found = re.search(rf"<caption>{re.escape(html.escape(caption))}</caption>(.*?)</table>",
                      text, re.S)
    assert found, caption
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in
             re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", found.group(1), re.S)]


# --- the builder -------------------------------------------------------------------------------


def test_hostile_strings_are_escaped_everywhere():
    report = Report(HOSTILE, subtitle=HOSTILE)
    report.add_section(HOSTILE).add_text(HOSTILE)
    report.add_table(HOSTILE, [HOSTILE, "b"], [[HOSTILE, 1.5]], row_headers=True)
    report.add_key_values(HOSTILE, {HOSTILE: HOSTILE})
    report.add_image(HOSTILE, png(), alt='x" onerror="alert(1)')
    report.add_list([HOSTILE])
    text = report.render()
    assert "<script" not in text.lower() and "<b>" not in text
    assert 'onerror="' not in text and "alt=\"x&quot; onerror=&quot;alert(1)\"" in text
    escaped = html.escape(HOSTILE, quote=True)
    # <title>, h1, subtitle, h2, paragraph, caption, column, row header, key-values caption,
    # key, value, figure caption, list item: each place escaped
    assert text.count(escaped) == 13
    assert Page(text).all("img")[0]["alt"] == 'x" onerror="alert(1)'


def test_hostile_paths_and_notes_in_an_evaluation_report_are_escaped():
    scans = binary_scans()
    scans[1]["path"] = HOSTILE
    text = evaluation_report(binary_dict(notes=[HOSTILE], data=HOSTILE), scans=scans,
                             explain_pngs={HOSTILE: png()}).render()
    assert "<script" not in text.lower()
    assert html.escape(HOSTILE, quote=True) in text
    assert_self_contained(text)


def test_a_page_is_self_contained_and_accessible():
    report = Report("t")
    report.add_section("Figures").add_image("a figure", png(30, 12), "a grey box")
    report.add_section("Tables").add_table("numbers", ["a", "b"], [[1, None], [0.123456, "x"]])
    text = report.render()
    images = assert_self_contained(text)
    assert len(images) == 1 and images[0]["alt"] == "a grey box"
    page = Page(text)
    assert page.all("html")[0]["lang"] == "en"
    assert any(a.get("http-equiv") == "Content-Security-Policy" for a in page.all("meta"))
    assert [a["scope"] for a in page.all("th")] == ["col", "col"]
    assert "@media print" in text and '<nav aria-label="Contents">' in text
    assert rows_of(text, "numbers") == [["a", "b"], ["1", "n/a"], ["0.1235", "x"]]


def test_an_image_must_be_png_and_a_row_must_fit_its_columns():
    with pytest.raises(BadInputError, match="not PNG"):
        Report("t").add_image("c", b"GIF89a not a png", "alt")
    with pytest.raises(BadInputError, match="row 1 has 1 cells for 2 columns"):
        Report("t").add_table("c", ["a", "b"], [["only one"]])


def test_write_is_atomic(tmp_path, monkeypatch):
    """The page appears in one rename of a complete temporary file beside it; a write that
    fails leaves the previous page whole and no temporary file behind."""
    target = tmp_path / "report.html"
    target.write_text("old report")
    report = Report("new <report>")
    expected = report.render()
    real_replace = os.replace
    seen = []

    def replace(src, dst):
        seen.append(Path(src))
        assert Path(dst) == target and Path(src).parent == tmp_path
        assert target.read_text() == "old report"  # untouched until the rename
        assert Path(src).read_text(encoding="utf-8") == expected
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert report.write(target) == target
    assert len(seen) == 1 and target.read_text(encoding="utf-8") == expected

    def fail(src, dst):
        raise OSError(28, "No space left on device", str(src))

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        Report("newer").write(target)
    assert target.read_text(encoding="utf-8") == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


# --- pictures ----------------------------------------------------------------------------------


def test_thumbnail_is_the_slice_with_the_most_lung_at_96_px():
    volume = np.full((10, 40, 80), 30, dtype=np.uint8)  # dark air around the body
    volume[:, 5:35, 5:75] = 200  # the body
    volume[6, 10:30, 10:35] = 60  # a lung on slice 6 only
    volume[6, 10:30, 45:70] = 60
    assert thumbnail_slice(volume) == 6
    with Image.open(io.BytesIO(thumbnail_png(volume))) as image:
        assert image.size == (96, 48) and image.mode == "L"
        shown = np.asarray(image)
    assert shown[24, 30] < 100  # the lung, dark: slice 6 is the one shown
    assert thumbnail_slice(np.full((9, 16, 16), 200, np.uint8)) == 4  # no lung: the middle
    with Image.open(io.BytesIO(thumbnail_png(volume[None]))) as image:  # 1 x D x H x W
        assert image.size == (96, 48)
    with pytest.raises(BadInputError, match="D x H x W"):
        thumbnail_png(np.zeros((4, 4), np.uint8))


def test_confusion_matrix_png_takes_both_forms():
    for matrix, classes in (({"tn": 5, "fp": 1, "fn": 2, "tp": 7}, ["non-covid", "covid"]),
                            ([[3, 0, 1], [0, 4, 0], [2, 0, 0]], ["covid", "cap", "normal"])):
        with Image.open(io.BytesIO(confusion_matrix_png(matrix, classes))) as image:
            assert image.format == "PNG" and image.width >= 360
    with pytest.raises(BadInputError, match="shape"):
        confusion_matrix_png([[1, 2], [3, 4]], ["a", "b", "c"])


# --- the evaluation report ---------------------------------------------------------------------


def test_binary_report_lays_out_configuration_metrics_and_confusion():
    data = binary_dict(notes=["a note"], preprocess={"size": [8, 32, 32]})
    data["metrics"]["calibration"] = {"ece": 0.125, "brier": 0.2,
                                      "bins": [{"low": 0, "high": 0.5, "n": 3}]}
    labels, probs = np.array([0, 1, 0, 1, 1, 1]), np.array([0.2, 0.9, 0.8, 0.7, 0.4, 0.8])
    groups = {"A": binary_report(labels[:4], probs[:4], 0.5, n_boot=30),
              "B": binary_report(labels[4:], probs[4:], 0.5, n_boot=30)}
    data["subgroups"] = {"by": "site", "groups": groups, "counts": {"A": 4, "B": 2},
                         "worst": {"group": "A", "metric": "auc", "value": 0.75},
                         "mean_group_macro_f1": 0.6}
    text = evaluation_report(data, roc_png=png(), reliability_png=png()).render()
    config = dict(rows_of(text, "What was evaluated, and how")[1:])
    assert config["threshold"] == "0.5000 (checkpoint: chosen on validation data)"
    assert config["model"] == "/runs/a/best.safetensors" and config["split"] == "test"
    assert config["preprocessing"] == "size 8, 32, 32"
    assert config["bootstrap"] == "50 resamples, seed 0, 95% percentile intervals"
    metrics = {r[0]: r[1:] for r in rows_of(
        text, "Metrics at the threshold 0.5000; the AUC does not depend on it")}
    m = data["metrics"]
    assert metrics["AUC"][0] == f"{m['auc']:.4f}" and " to " in metrics["AUC"][1]
    assert metrics["sensitivity"][0] == f"{m['sensitivity']:.4f}"
    assert set(metrics) >= {"F1 (covid)", "F1 (non-covid)", "macro F1", "specificity",
                            "accuracy"}
    cm = m["confusion_matrix"]
    assert rows_of(text, "Rows: the true class; columns: the predicted class")[1:] == [
        ["non-covid", str(cm["tn"]), str(cm["fp"]), str(cm["tn"] + cm["fp"])],
        ["covid", str(cm["fn"]), str(cm["tp"]), str(cm["fn"] + cm["tp"])]]
    calibration = dict(rows_of(text, "Calibration of the probabilities")[1:])
    assert calibration == {"ECE (expected calibration error, equal-width bins)": "0.1250",
                           "Brier score": "0.2000"}
    assert rows_of(text, "bins")[1] == ["0", "0.5000", "3"]
    sites = rows_of(text, "Metrics per site")
    assert sites[0] == ["site", "scans", "covid", "non-covid", "AUC", "sensitivity",
                        "specificity", "F1 (covid)", "macro F1", "accuracy", "AUC 95% CI",
                        "macro F1 95% CI"]
    assert sites[1][:5] == ["A", "4", "2", "2", "0.7500"]
    assert sites[2][:5] == ["B", "2", "2", "0", "n/a"] and sites[2][10] == "undefined"
    assert "B: auc: undefined: no non-covid scans" in text
    assert "The worst site: A (AUC 0.7500)." in text
    assert dict(rows_of(text, "Over the site groups")[1:]) == {"mean group macro f1": "0.6000"}
    simple = evaluation_report({**data, "subgroups": {
        "F": {"n": 3, "auc": 0.5}, "M": {"n": 3, "auc": None}, "worst": "M"}}).render()
    assert rows_of(simple, "Metrics per subgroup") == [["subgroup", "scans", "AUC"],
                                                       ["F", "3", "0.5000"], ["M", "3", "n/a"]]
    assert "The worst subgroup: M." in simple
    every = evaluation_report({**data, "split": "all"}).render()
    assert "<h1>Evaluation of best.safetensors on every labelled scan</h1>" in every
    assert "<li>a note</li>" in text
    assert len(assert_self_contained(text)) == 3  # confusion matrix, ROC, reliability


def test_scans_come_most_confident_errors_first_with_their_explanations():
    labels, probs = (0, 0, 1, 1, 1, 0), (0.1, 0.7, 0.8, 0.35, 0.95, 0.52)
    scans = binary_scans(labels, probs)
    maps = {"/data/scan_3": png(), "/data/scan_5": png(), "/data/scan_1": png()}
    text = evaluation_report(binary_dict(labels, probs), scans=scans,
                             explain_pngs=maps).render()
    table = rows_of(text, "Each scan's label and prediction (errors shaded)")
    assert table[0] == ["#", "slice", "path", "label", "predicted", "outcome",
                        "probability of covid"]
    # errors, then the correct scans, each by the probability of the predicted class:
    # errors 0.7 (covid), 0.65 (non-covid), 0.52; correct 0.95, 0.9 (non-covid), 0.8
    assert [r[2] for r in table[1:]] == ["/data/scan_1", "/data/scan_3", "/data/scan_5",
                                         "/data/scan_4", "/data/scan_0", "/data/scan_2"]
    assert [r[5] for r in table[1:]] == ["error"] * 3 + ["correct"] * 3
    assert text.count('<tr class="flag">') == 3
    captions = re.findall(r"<figcaption>(.*?)</figcaption>",
                          text.split(">Explanation maps</h2>")[1])
    assert [c.split(":")[0] for c in captions] == ["/data/scan_1", "/data/scan_3",
                                                   "/data/scan_5"]
    # 6 thumbnails, 1 confusion matrix, 3 explanation maps
    assert len(assert_self_contained(text)) == 10
    capped = evaluation_report(binary_dict(labels, probs), scans=scans, max_thumbnails=2)
    assert len(Page(capped.render()).all("img")) == 1 + 2


def test_multiclass_report_per_class_averages_confusion_and_probabilities():
    classes = ["covid", "cap", "normal"]
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    probs = rng.dirichlet([1, 1, 1], size=len(labels))
    metrics = multiclass_report(labels, probs, classes, n_boot=20)
    data = {"model": "ens.json", "kind": "ensemble", "members": ["a.safetensors",
                                                                "b.safetensors"],
            "data": "/data", "split": "val", "classes": classes, "threshold": None,
            "metrics": metrics, "notes": []}
    scans = [{"path": f"/s{i}", "label": int(y), "probabilities": p.tolist(),
              "thumbnail_png": None} for i, (y, p) in enumerate(zip(labels, probs, strict=True))]
    text = evaluation_report(data, scans=scans).render()
    config = dict(rows_of(text, "What was evaluated, and how")[1:])
    assert config["decision"] == "the most probable class of each scan"
    assert config["members"] == "a.safetensors, b.safetensors"
    per_class = rows_of(text, "Per class, one against the rest")
    assert per_class[0] == ["class", "scans", "AUC", "F1", "sensitivity", "specificity",
                            "precision"]
    assert [r[0] for r in per_class[1:]] == classes
    averages = {r[0]: r[1:] for r in rows_of(
        text, "Averages: macro, each class counting the same; micro, each scan counting the "
              "same")[1:]}
    assert set(averages) == {"macro AUC", "micro AUC", "macro F1", "micro F1", "accuracy"}
    assert " to " in averages["macro F1"][1]
    confusion = rows_of(text, "Rows: the true class; columns: the predicted class")
    assert confusion[0] == ["true \\ predicted", *classes, "total"]
    assert [[int(v) for v in r[1:4]] for r in confusion[1:]] == metrics["confusion_matrix"]
    table = rows_of(text, "Each scan's label and prediction (errors shaded)")
    assert table[0][-3:] == ["p(covid)", "p(cap)", "p(normal)"]
    guess = probs.argmax(axis=1)
    assert sum(r[5] == "error" for r in table[1:]) == int((guess != labels).sum())
    first = table[1]
    assert first[4] == classes[int(np.argmax([float(v) for v in first[-3:]]))]


def test_cv_report_folds_mean_std_and_pooled():
    summary = {
        "out": "/studies/x", "interrupted": False, "backbone": "regnet3d",
        "classes": ["non-covid", "covid"], "folds": 2, "repeats": 1,
        "fold_metrics": [
            {"repeat": 0, "fold": 0, "n_val": 10, "best_epoch": 3, "run": "/studies/x/f0",
             "auc": 0.9, "f1": 0.8, "macro_f1": 0.8, "accuracy": 0.8, "sensitivity": 0.75,
             "specificity": 0.85},
            {"repeat": 0, "fold": 1, "n_val": 10, "best_epoch": 5, "run": "/studies/x/f1",
             "auc": 0.8, "f1": 0.7, "macro_f1": 0.7, "accuracy": 0.7, "sensitivity": 0.65,
             "specificity": 0.75}],
        "mean_std": {"auc": {"mean": 0.85, "std": 0.0707, "folds": 2}},
        "pooled_oof": [{"repeat": 0, "n": 20, "auc": 0.86, "f1": 0.75, "macro_f1": 0.75,
                        "accuracy": 0.75, "sensitivity": 0.7, "specificity": 0.8}],
        "threshold": {"value": 0.44, "source": "out-of-fold", "note": "Youden"},
        "oof": "/studies/x/oof.csv", "ensemble": "/studies/x/ensemble.json",
        "notes": ["folds chose their epochs on their own val part"]}
    text = cv_report(summary).render()
    folds = rows_of(text, "Each fold's model on its own held-out part (its val scans)")
    assert folds[0] == ["repeat", "fold", "scans", "best epoch", "AUC", "F1 (covid)",
                        "macro F1", "accuracy", "sensitivity", "specificity", "run"]
    assert folds[2][:5] == ["0", "1", "10", "5", "0.8000"]
    assert rows_of(text, "Mean ± standard deviation over the folds (sample standard "
                         "deviation)")[1] == ["AUC", "0.8500 ± 0.07070", "2"]
    pooled = rows_of(text, "Every scan predicted once per repeat, by the model that did not "
                           "see it")
    assert pooled[1][:3] == ["0", "20", "0.8600"]
    assert "0.4400 (out-of-fold: Youden)" in text and "<li>folds chose" in text
    assert_self_contained(text)
    multi = {**summary, "classes": ["a", "b", "c"],
             "fold_metrics": [{"repeat": 0, "fold": 0, "n_val": 9, "auc": 0.7,
                               "per_class_auc": {"a": 0.6, "b": 0.7, "c": 0.8},
                               "per_class_f1": {"a": 0.5, "b": 0.6, "c": 0.7}}]}
    header = rows_of(cv_report(multi).render(),
                     "Each fold's model on its own held-out part (its val scans)")[0]
    assert header[4:11] == ["AUC", "AUC a", "AUC b", "AUC c", "F1 a", "F1 b", "F1 c"]
    stopped = cv_report({"out": "/s", "interrupted": True, "folds_done": 1}).render()
    assert "interrupted after 1 finished fold(s)" in stopped


# --- end to end: a real evaluation -------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated(inference_env, tmp_path_factory):
    """`covidzoo evaluate --json --roc --predictions` of the tiny checkpoint `a`, and the report
    built from its output: the predictions CSV as the scans, thumbnails of the scans as the
    model sees them."""
    from covidzoo.cli import cli

    out = tmp_path_factory.mktemp("report")
    result = CliRunner().invoke(cli, [
        "evaluate", str(inference_env.a), "--data", str(inference_env.data), "--json",
        "--device", "cpu", "--bootstrap", "20", "--roc", str(out / "roc.png"),
        "--predictions", str(out / "predictions.csv")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    cfg = PreprocessConfig(size=(8, 32, 32))
    with (out / "predictions.csv").open() as fh:
        scans = [{**row, "probability": float(row["probability"]),
                  "thumbnail_png": thumbnail_png(load_scan(row["path"], cfg))}
                 for row in csv.DictReader(fh)]
    report = evaluation_report(data, roc_png=Path(data["roc"]).read_bytes(), scans=scans)
    path = report.write(out / "report.html")
    return SimpleNamespace(data=data, scans=scans, path=path, text=path.read_text("utf-8"),
                           env=inference_env)


def test_a_report_of_a_real_evaluation(evaluated):
    text, data = evaluated.text, evaluated.data
    images = assert_self_contained(text)
    assert len(images) == 2 + len(evaluated.scans)  # confusion matrix, ROC, thumbnails
    assert "Evaluation of a.safetensors on the val split" in text
    config = dict(rows_of(text, "What was evaluated, and how")[1:])
    assert config["threshold"].startswith("0.4200 (checkpoint")
    assert config["scans evaluated"] == str(data["timing"]["scans"])
    table = rows_of(text, "Each scan's label and prediction (errors shaded)")[1:]
    assert sorted(r[2] for r in table) == sorted(s["path"] for s in evaluated.scans)
    for row in table:
        scan = next(s for s in evaluated.scans if s["path"] == row[2])
        assert row[3:5] == [scan["label"], scan["predicted"]]
        assert row[5] == ("error" if scan["label"] != scan["predicted"] else "correct")


@pytest.fixture(scope="module")
def cli_report(inference_env, tmp_path_factory) -> Path:
    """The page `covidzoo evaluate --report` writes for the tiny checkpoint `a`."""
    from covidzoo.cli import cli

    path = tmp_path_factory.mktemp("cli-report") / "report.html"
    result = CliRunner().invoke(cli, [
        "evaluate", str(inference_env.a), "--data", str(inference_env.data), "--json",
        "--device", "cpu", "--report", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["report"] == str(path)
    return path


def test_evaluate_report_writes_a_self_contained_page(cli_report):
    text = cli_report.read_text("utf-8")
    assert len(assert_self_contained(text)) >= 3  # confusion matrix, ROC, thumbnails
    assert "<h2 id=\"s1\">Configuration</h2>" in text and ">Scans</h2>" in text


# --- a real browser ----------------------------------------------------------------------------

# Runs before anything else in the page: records script errors, console.error calls and policy
# violations; half a second (of virtual time) after everything has loaded, when the browser has
# reported what it refused, every image that did not decode (naturalWidth 0) or decoded to
# another size than the page states; and writes all of it into <pre id="probe">, rewritten if
# anything comes later.
PROBE = """<script>
(function () {
  var errors = [], broken = [], count = 0, probe = null;
  function show() {
    if (probe) probe.textContent = JSON.stringify({errors: errors, broken: broken,
                                                   images: count});
  }
  function record(text) { errors.push(text); show(); }
  window.onerror = function (message, source, line) {
    record("onerror: " + message + " (line " + line + ")");
  };
  var original = console.error;
  console.error = function () {
    record("console.error: " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
  document.addEventListener("securitypolicyviolation", function (e) {
    record("policy: " + e.violatedDirective + " " + e.blockedURI);
  });
  window.addEventListener("load", function () {
    setTimeout(function () {
      var images = document.images;
      count = images.length;
      for (var i = 0; i < images.length; i++) {
        var img = images[i], width = img.getAttribute("width");
        if (!img.complete || img.naturalWidth === 0) broken.push("broken: " + img.alt);
        else if (width && +width !== img.naturalWidth) broken.push("size: " + img.alt);
      }
      probe = document.createElement("pre");
      probe.id = "probe";
      document.body.appendChild(probe);
      show();
    }, 500);
  });
})();
</script>"""


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
               f"--user-data-dir={profile}", "--no-first-run", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def probe(text: str, tmp_path: Path) -> dict:
    """What the probe saw when Chromium loaded a copy of `text` with the probe first."""
    copy = tmp_path / "probed.html"
    copy.write_text(text.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    done = chromium("--virtual-time-budget=5000", "--dump-dom", copy.as_uri(),
                    profile=tmp_path / "profile")
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no probe in the dumped page (rc {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@needs_chromium
def test_chromium_loads_the_report_without_errors_or_broken_images(evaluated, tmp_path):
    seen = probe(evaluated.text, tmp_path)
    assert seen == {"errors": [], "broken": [], "images": 2 + len(evaluated.scans)}


BROKEN = {
    "broken image": ('<img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB" '
                     'alt="half a png" width="1" height="1">', "broken", "broken: half a png"),
    "external image": ('<img src="https://example.invalid/x.png" alt="far away">', "errors",
                       "policy: img-src https://example.invalid/x.png"),
    "inline script": ("<script>document.title = 'ran';</script>", "errors", "policy: script-src"),
}


@needs_chromium
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_the_probe_sees_what_is_wrong(evaluated, tmp_path, case):
    """The probe can fail: a broken image, something fetched from elsewhere, a script (the
    page's policy refuses the last two)."""
    markup, key, expected = BROKEN[case]
    seen = probe(evaluated.text.replace("</main>", markup + "</main>", 1), tmp_path)
    assert any(item.startswith(expected) for item in seen[key]), seen


@needs_chromium
def test_the_probe_sees_script_errors(tmp_path):
    """Without the report's policy (which would refuse the script), errors and console.error
    calls reach the probe."""
    page = ("<!DOCTYPE html><html><head><title>t</title></head><body><script>"
            "console.error('said'); throw new Error('thrown');</script></body></html>")
    seen = probe(page, tmp_path)
    assert "console.error: said" in seen["errors"]
    assert any(e.startswith("onerror: Uncaught Error: thrown") for e in seen["errors"]), seen


@needs_chromium
def test_chromium_loads_the_page_of_evaluate_report(cli_report, tmp_path):
    text = cli_report.read_text("utf-8")
    seen = probe(text, tmp_path)
    assert seen == {"errors": [], "broken": [], "images": text.count("<img ")}


@needs_chromium
def test_chromium_screenshot_of_the_report(evaluated, tmp_path):
    shot = tmp_path / "report.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1280,1800",
                    "--hide-scrollbars", evaluated.path.as_uri(), profile=tmp_path / "profile")
    assert shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1280, 1800)
        pixels = np.asarray(image.convert("L"))
    assert pixels.min() < 100 and pixels.max() > 200  # text on white, not a blank page
