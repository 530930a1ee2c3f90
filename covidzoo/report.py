"""One self-contained HTML report, for a paper's supplement: `evaluate --report report.html`.

Everything is in the file: images are embedded as base64 `data:` URIs, the stylesheet is inline,
there is no script and nothing is fetched (a Content-Security-Policy in the page refuses any
load but its own images). The page reads without colour: headings, table captions and header
cells, alt text on every image, errors named in words as well as shaded; it prints cleanly.

`Report` is the builder, independent of any command: sections of paragraphs, tables, key-value
tables and figures, every string escaped. `evaluation_report` lays out what
`EvalReport.to_dict()` holds (two classes or more), `cv_report` what `cv.json` holds.
`thumbnail_png` and `confusion_matrix_png` draw the pictures with Pillow.
"""

from __future__ import annotations

import base64
import html
import io
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInputError
from .values import format_number

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
THUMBNAIL_PX = 96  # the longest side of a scan's thumbnail
MAX_THUMBNAILS = 200  # thumbnails in the per-scan table, from its top (errors first)
# What the page may load: its own inline style and data: images, nothing else, no script.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
:root { color-scheme: light; }
body { margin: 0; background: #fff; color: #111;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 40px; }
h1 { font-size: 1.6em; margin: 0 0 .2em; }
h2 { font-size: 1.25em; margin: 1.8em 0 .5em; padding-bottom: .2em;
  border-bottom: 1px solid #bbb; }
p.subtitle, footer, figcaption, .caption { color: #333; }
nav ol { margin: .4em 0; padding-left: 1.4em; columns: 2; }
table { border-collapse: collapse; margin: .4em 0 1.2em; min-width: 22em;
  font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: .3em 0; }
th, td { border: 1px solid #b5b5b5; padding: .25em .6em; text-align: left;
  vertical-align: middle; }
thead th { background: #eee; }
tbody th { font-weight: 600; background: #f7f7f7; }
td { overflow-wrap: anywhere; }
td.num { text-align: right; overflow-wrap: normal; }
tr.flag > td, tr.flag > th { background: #fbe3e0; }
figure { margin: 1em 0 1.4em; }
figure img { border: 1px solid #ddd; }
img { max-width: 100%; height: auto; }
img.thumb { display: block; border: 0; }
ul.notes li { margin: .2em 0; }
footer { margin-top: 2.5em; padding-top: .6em; border-top: 1px solid #bbb; font-size: .9em; }
@page { margin: 14mm; }
@media print {
  body { font-size: 10pt; }
  main { max-width: none; padding: 0; }
  nav { display: none; }
  h2 { break-after: avoid; }
  figure, tr, img { break-inside: avoid; }
  thead { display: table-header-group; }
  tr.flag > td, tr.flag > th, thead th, tbody th {
    -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


@dataclass(frozen=True)
class Picture:
    """A PNG to embed, with its alt text: a figure's content or a table cell (a thumbnail)."""

    png: bytes
    alt: str

    def size(self) -> tuple[int, int]:
        """Width and height from the PNG header; a `BadInputError` when it is not a PNG."""
        if self.png[:8] != PNG_SIGNATURE or self.png[12:16] != b"IHDR" or len(self.png) < 24:
            raise BadInputError(f"image '{self.alt}': not PNG data")
        return struct.unpack(">II", self.png[16:24])

    def html(self, css_class: str | None = None) -> str:
        width, height = self.size()
        data = base64.b64encode(self.png).decode("ascii")
        cls = f' class="{css_class}"' if css_class else ""
        return (f'<img{cls} src="data:image/png;base64,{data}" alt="{_esc(self.alt)}" '
                f'width="{width}" height="{height}">')


Cell = str | int | float | bool | None | Picture | Sequence[Any] | Mapping[str, Any]


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def text_of(value: Any) -> str:
    """A value as a reader sees it: numbers to four significant digits, None as "n/a", lists
    joined by commas, dicts as `key value` pairs."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float | np.integer | np.floating):
        return format_number(value.item() if isinstance(value, np.generic) else value)
    if isinstance(value, Mapping):
        return "; ".join(f"{k} {text_of(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(text_of(v) for v in value)
    return str(value)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float | np.integer | np.floating)
            and not isinstance(value, bool))


def _cell(value: Cell, tag: str = "td", scope: str | None = None) -> str:
    attrs = f' scope="{scope}"' if scope else ""
    if isinstance(value, Picture):
        return f"<{tag}{attrs}>{value.html('thumb')}</{tag}>"
    if tag == "td" and _is_number(value):
        attrs += ' class="num"'
    return f"<{tag}{attrs}>{_esc(text_of(value))}</{tag}>"


@dataclass
class _Section:
    heading: str | None
    anchor: str
    blocks: list[str]


class Report:
    """An HTML page built section by section; `render()` gives the page, `write(path)` saves
    it atomically. Every string given is escaped: paths and notes may hold anything.

        report = Report("Evaluation of best.safetensors")
        report.add_section("Metrics")
        report.add_table("At the threshold", ["metric", "value"], [("AUC", 0.93)])
        report.write("report.html")
    """

    def __init__(self, title: str, subtitle: str | None = None,
                 generated: datetime | None = None) -> None:
        self.title = title
        self.subtitle = subtitle
        self.generated = generated or datetime.now(timezone.utc)
        self._sections: list[_Section] = [_Section(None, "top", [])]

    @property
    def _blocks(self) -> list[str]:
        return self._sections[-1].blocks

    def add_section(self, heading: str) -> Report:
        """Start a section (an `<h2>`, listed in the contents); what is added next goes in it."""
        self._sections.append(_Section(heading, f"s{len(self._sections)}", []))
        return self

    def add_text(self, text: str) -> Report:
        """A paragraph; blank lines separate paragraphs."""
        for paragraph in (p.strip() for p in text.split("\n\n")):
            if paragraph:
                self._blocks.append(f"<p>{_esc(paragraph)}</p>")
        return self

    def add_list(self, items: Sequence[Any], caption: str | None = None) -> Report:
        """A bulleted list (notes), under `caption` when given."""
        if caption:
            self._blocks.append(f'<p class="caption">{_esc(caption)}</p>')
        lines = "".join(f"<li>{_esc(text_of(item))}</li>" for item in items)
        self._blocks.append(f'<ul class="notes">{lines}</ul>')
        return self

    def add_table(self, caption: str, columns: Sequence[str], rows: Sequence[Sequence[Cell]],
                  *, row_headers: bool = False, flagged: Sequence[bool] | None = None
                  ) -> Report:
        """A table with a caption and a header row; `row_headers` makes each row's first cell
        its header (`<th scope="row">`); rows where `flagged` is true are shaded (say why in a
        cell too: shading alone does not reach every reader)."""
        head = "".join(_cell(c, "th", "col") for c in columns)
        body = []
        for i, row in enumerate(rows):
            if len(row) != len(columns):
                raise BadInputError(f"table '{caption}': row {i + 1} has {len(row)} cells for "
                                    f"{len(columns)} columns")
            cells = [_cell(v, "th", "row") if row_headers and j == 0 else _cell(v)
                     for j, v in enumerate(row)]
            css = ' class="flag"' if flagged is not None and flagged[i] else ""
            body.append(f"<tr{css}>{''.join(cells)}</tr>")
        self._blocks.append(f"<table><caption>{_esc(caption)}</caption><thead><tr>{head}</tr>"
                            f"</thead><tbody>{''.join(body)}</tbody></table>")
        return self

    def add_key_values(self, caption: str, values: Mapping[str, Any]) -> Report:
        """A two-column table, one row per key (the key its row header)."""
        if values:
            self.add_table(caption, ["name", "value"], list(values.items()), row_headers=True)
        return self

    def add_image(self, caption: str, png_bytes: bytes, alt: str) -> Report:
        """A figure: the PNG embedded as a data: URI, its alt text and its caption."""
        picture = Picture(png_bytes, alt)
        self._blocks.append(f"<figure>{picture.html()}<figcaption>{_esc(caption)}"
                            "</figcaption></figure>")
        return self

    def render(self) -> str:
        """The whole page."""
        from ._version import __version__

        sections = [s for s in self._sections if s.heading is None or s.blocks]
        titled = [s for s in sections if s.heading is not None]
        parts = [f"<h1>{_esc(self.title)}</h1>"]
        if self.subtitle:
            parts.append(f'<p class="subtitle">{_esc(self.subtitle)}</p>')
        if len(titled) > 1:
            items = "".join(f'<li><a href="#{s.anchor}">{_esc(s.heading)}</a></li>'
                            for s in titled)
            parts.append(f'<nav aria-label="Contents"><ol>{items}</ol></nav>')
        for section in sections:
            if section.heading is None:
                parts.extend(section.blocks)
                continue
            parts.append(f'<section aria-labelledby="{section.anchor}"><h2 id="{section.anchor}">'
                         f"{_esc(section.heading)}</h2>{''.join(section.blocks)}</section>")
        when = self.generated.strftime("%Y-%m-%d %H:%M %Z").strip()
        footer = (f"<footer>Made by covidzoo {_esc(__version__)} on {_esc(when)}. This file is "
                  "self-contained: every image is embedded in it and it loads nothing from "
                  "elsewhere.</footer>")
        return ("<!DOCTYPE html>\n"
                '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
                '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
                f'<meta name="generator" content="covidzoo {_esc(__version__)}">\n'
                f"<title>{_esc(self.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
                f"<main>\n{chr(10).join(parts)}\n{footer}\n</main>\n</body>\n</html>\n")

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Save the page as UTF-8, atomically (a temporary file renamed onto `path`)."""
        from .fileio import atomic_write_bytes

        return atomic_write_bytes(path, self.render().encode("utf-8"))


# --- pictures ----------------------------------------------------------------------------------


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def thumbnail_slice(volume: np.ndarray) -> int:
    """The axial slice a thumbnail shows: the one with the most lung (dark voxels the body
    encloses, as `data inspect` chooses its cuts), else the middle one."""
    from .data.montage import LUNG_GREY, lung_cuts

    found = lung_cuts(volume, LUNG_GREY)
    return volume.shape[0] // 2 if found is None else found[0]


def thumbnail_png(volume: Any, size: int = THUMBNAIL_PX) -> bytes:
    """A small greyscale PNG of a uint8 `D x H x W` volume (a cached scan, as the model sees
    it): the axial slice of `thumbnail_slice`, its longest side `size` pixels."""
    from PIL import Image

    array = np.asarray(volume)
    if array.ndim == 4 and array.shape[0] == 1:  # a cached scan's channel
        array = array[0]
    if array.ndim != 3 or 0 in array.shape:
        raise BadInputError(f"a thumbnail needs a D x H x W volume, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(array[thumbnail_slice(array)]))
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.BILINEAR)
    return _png(image)


def _matrix(matrix: Any, classes: Sequence[str]) -> np.ndarray:
    """A binary report's `{"tn", "fp", "fn", "tp"}` or a K x K list as an array."""
    if isinstance(matrix, Mapping):
        matrix = [[matrix["tn"], matrix["fp"]], [matrix["fn"], matrix["tp"]]]
    array = np.asarray(matrix, dtype=np.int64)
    if array.shape != (len(classes), len(classes)):
        raise BadInputError(f"a confusion matrix of shape {array.shape} for {len(classes)} "
                            "classes")
    return array


def confusion_matrix_png(matrix: Any, classes: Sequence[str]) -> bytes:
    """The confusion matrix as a PNG: rows the true class, columns the predicted one, each cell
    its count and its share of the row, shaded by that share (blue, darker for more)."""
    from PIL import Image, ImageDraw

    from .plots import BLACK, GREY, PALETTE, WHITE, default_font

    array = _matrix(matrix, classes)
    k = len(classes)
    cell = max(56, min(110, 440 // k))
    title_font, font, small = default_font(16), default_font(14), default_font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(probe.textlength(str(c), font=font) for c in classes)
    left = round(36 + label_w + 12)
    top = 100
    width = max(left + k * cell + 24, 360)
    height = top + k * cell + 20
    image = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((width / 2, 8), "Confusion matrix", fill=BLACK, font=title_font, anchor="ma")
    draw.text((width / 2, 30), "rows: true class; columns: predicted; % of the row",
              fill=GREY, font=small, anchor="ma")
    draw.text((left + k * cell / 2, 52), "predicted", fill=BLACK, font=font, anchor="ma")
    rows = array.sum(axis=1)
    blue = np.asarray(PALETTE[0], dtype=float)
    for j, name in enumerate(classes):
        draw.text((left + (j + 0.5) * cell, top - 8), str(name), fill=BLACK, font=font,
                  anchor="md")
    for i, name in enumerate(classes):
        y0 = top + i * cell
        draw.text((left - 10, y0 + cell / 2), str(name), fill=BLACK, font=font, anchor="rm")
        for j in range(k):
            x0 = left + j * cell
            share = array[i, j] / rows[i] if rows[i] else 0.0
            fill = tuple(int(round(255 + (c - 255) * share)) for c in blue)
            draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=fill, outline=GREY)
            ink = WHITE if share > 0.5 else BLACK
            draw.text((x0 + cell / 2, y0 + cell / 2 - 9), str(int(array[i, j])), fill=ink,
                      font=title_font, anchor="mm")
            draw.text((x0 + cell / 2, y0 + cell / 2 + 11),
                      f"{share:.0%}" if rows[i] else "-", fill=ink, font=small, anchor="mm")
    label = Image.new("RGB", (round(probe.textlength("true", font=font)) + 4, 20), WHITE)
    ImageDraw.Draw(label).text((2, 2), "true", fill=BLACK, font=font)
    label = label.rotate(90, expand=True)
    image.paste(label, (8, round(top + k * cell / 2 - label.height / 2)))
    return _png(image)


def _confusion_alt(array: np.ndarray, classes: Sequence[str]) -> str:
    rows = [f"true {t}: " + ", ".join(f"{int(array[i, j])} predicted {p}"
                                      for j, p in enumerate(classes))
            for i, t in enumerate(classes)]
    return "Confusion matrix. " + "; ".join(rows) + "."


# --- the evaluation report ---------------------------------------------------------------------


def _class_name(value: Any, classes: Sequence[str]) -> str:
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return classes[int(value)]
    return str(value)


@dataclass(frozen=True)
class _Scan:
    """One row of the per-scan table, normalised: class names, probabilities by class."""

    path: str
    label: str
    predicted: str
    probabilities: dict[str, float]
    thumbnail: bytes | None

    @property
    def error(self) -> bool:
        return self.label != self.predicted

    @property
    def confidence(self) -> float:
        """The probability the model gave the class it predicted."""
        return self.probabilities.get(self.predicted, 0.0)


def _scan(scan: Mapping[str, Any], classes: Sequence[str], threshold: float | None) -> _Scan:
    label = _class_name(scan["label"], classes)
    if scan.get("probabilities") is not None:
        given = scan["probabilities"]
        probs = ({str(k): float(v) for k, v in given.items()} if isinstance(given, Mapping)
                 else {c: float(v) for c, v in zip(classes, given, strict=True)})
    else:
        p = float(scan["probability"])
        probs = {classes[0]: 1 - p, classes[1]: p}
    if scan.get("predicted") is not None:
        predicted = _class_name(scan["predicted"], classes)
    elif threshold is not None and len(classes) == 2:
        predicted = classes[1] if probs[classes[1]] >= threshold else classes[0]
    else:
        predicted = max(probs, key=lambda c: probs[c])
    return _Scan(str(scan["path"]), label, predicted, probs, scan.get("thumbnail_png"))


def _ordered(scans: list[_Scan]) -> list[_Scan]:
    """Errors first, then the correct scans, each the most confident first (the order of
    `EvalReport.scan_rows`, whose first rows carry the thumbnails)."""
    return sorted(scans, key=lambda s: (not s.error, -s.confidence))


def _threshold_value(report: Mapping[str, Any]) -> float | None:
    threshold = report.get("threshold")
    return None if threshold is None else float(threshold["value"])


def _ci(interval: Any) -> str:
    if interval is None:
        return "undefined"
    low, high = interval
    return f"{format_number(low)} to {format_number(high)}"


def _configuration(report: Mapping[str, Any]) -> dict[str, Any]:
    metrics = report.get("metrics", {})
    values: dict[str, Any] = {"model": report.get("model"), "kind": report.get("kind")}
    members = report.get("members") or []
    if len(members) > 1 or (members and str(members[0]) != str(report.get("model"))):
        values["members"] = members
    values["classes"] = report.get("classes")
    values["data"] = report.get("data")
    values["split"] = report.get("split")
    threshold = report.get("threshold")
    if threshold is None:
        values["decision"] = "the most probable class of each scan"
    else:
        note = f": {threshold['note']}" if threshold.get("note") else ""
        values["threshold"] = (f"{format_number(threshold['value'])} "
                               f"({threshold['source']}{note})")
    preprocess = report.get("preprocess", report.get("preprocessing"))
    if preprocess:
        values["preprocessing"] = preprocess
    if report.get("tta") not in (None, "none"):
        values["test-time augmentation"] = report["tta"]
    timing = report.get("timing") or {}
    values["scans evaluated"] = timing.get("scans", metrics.get("n"))
    if report.get("unlabelled"):
        values["unlabelled scans left out"] = report["unlabelled"]
    if report.get("failed"):
        values["scans that failed to read"] = len(report["failed"])
    boot = metrics.get("bootstrap")
    if boot:
        values["bootstrap"] = (f"{boot['n_boot']} resamples, seed {boot['seed']}, "
                               f"{boot['level']:.0%} percentile intervals")
    values["device"] = report.get("device")
    values["precision"] = report.get("precision")
    if timing.get("inference_volumes_per_s") is not None:
        values["inference"] = f"{format_number(timing['inference_volumes_per_s'])} volumes/s"
    return {k: v for k, v in values.items() if v is not None}


def _summary(report: Mapping[str, Any]) -> str:
    metrics = report["metrics"]
    n = metrics.get("n")
    split = report.get("split")
    where = (f"{report.get('data')} (every split)" if split == "all"
             else f"the '{split}' split of {report.get('data')}")
    if report.get("threshold") is None:
        support = ", ".join(f"{v} {k}" for k, v in metrics.get("support", {}).items())
        return (f"{n} labelled scans ({support}) of {where}. Macro AUC "
                f"{text_of(metrics.get('macro_auc'))}, macro F1 {text_of(metrics.get('macro_f1'))}"
                f", accuracy {text_of(metrics.get('accuracy'))}; each scan is called its most "
                "probable class.")
    threshold = report["threshold"]
    return (f"{n} labelled scans ({metrics.get('n_covid')} covid, "
            f"{metrics.get('n_non_covid')} non-covid) of {where}. AUC "
            f"{text_of(metrics.get('auc'))}; at the threshold {format_number(threshold['value'])}"
            f" ({threshold['source']}): sensitivity {text_of(metrics.get('sensitivity'))}, "
            f"specificity {text_of(metrics.get('specificity'))}, macro F1 "
            f"{text_of(metrics.get('macro_f1'))}.")


def _binary_metrics(out: Report, metrics: Mapping[str, Any]) -> None:
    boot = metrics.get("bootstrap") or {}
    level = f"{boot['level']:.0%} CI" if boot else None
    f1s = metrics.get("f1_per_class", {})
    rows: list[list[Any]] = [
        ["AUC", metrics.get("auc"), boot.get("auc", "")],
        ["F1 (covid)", metrics.get("f1"), ""],
        ["F1 (non-covid)", f1s.get("non-covid"), ""],
        ["macro F1", metrics.get("macro_f1"), boot.get("macro_f1", "")],
        ["sensitivity", metrics.get("sensitivity"), ""],
        ["specificity", metrics.get("specificity"), ""],
        ["accuracy", metrics.get("accuracy"), ""],
    ]
    if level:
        out.add_table(f"Metrics at the threshold {format_number(metrics['threshold'])}; the "
                      "AUC does not depend on it", ["metric", "value", level],
                      [[m, v, ci if ci == "" else _ci(ci)] for m, v, ci in rows],
                      row_headers=True)
    else:
        out.add_table(f"Metrics at the threshold {format_number(metrics['threshold'])}; the "
                      "AUC does not depend on it", ["metric", "value"],
                      [r[:2] for r in rows], row_headers=True)


def _multiclass_metrics(out: Report, metrics: Mapping[str, Any]) -> None:
    per_class = metrics.get("per_class", {})
    out.add_table("Per class, one against the rest", [
        "class", "scans", "AUC", "F1", "sensitivity", "specificity", "precision"], [
        [name, c.get("support"), c.get("auc"), c.get("f1"), c.get("sensitivity"),
         c.get("specificity"), c.get("precision")] for name, c in per_class.items()],
        row_headers=True)
    boot = metrics.get("bootstrap") or {}
    rows: list[list[Any]] = [
        ["macro AUC", metrics.get("macro_auc"), boot.get("macro_auc", "")],
        ["micro AUC", metrics.get("micro_auc"), ""],
        ["macro F1", metrics.get("macro_f1"), boot.get("macro_f1", "")],
        ["micro F1", metrics.get("micro_f1"), ""],
        ["accuracy", metrics.get("accuracy"), ""],
    ]
    caption = ("Averages: macro, each class counting the same; micro, each scan counting the "
               "same")
    if boot:
        out.add_table(caption, ["metric", "value", f"{boot['level']:.0%} CI"],
                      [[m, v, ci if ci == "" else _ci(ci)] for m, v, ci in rows],
                      row_headers=True)
    else:
        out.add_table(caption, ["metric", "value"], [r[:2] for r in rows], row_headers=True)


def _confusion(out: Report, metrics: Mapping[str, Any], classes: Sequence[str]) -> None:
    array = _matrix(metrics["confusion_matrix"], classes)
    out.add_table("Rows: the true class; columns: the predicted class",
                  ["true \\ predicted", *classes, "total"],
                  [[name, *array[i].tolist(), int(array[i].sum())]
                   for i, name in enumerate(classes)], row_headers=True)
    out.add_image("The confusion matrix, each cell with its share of its row.",
                  confusion_matrix_png(array, classes), _confusion_alt(array, classes))


# Names of calibration figures as a reader knows them; other keys are shown as they are.
_CALIBRATION_NAMES = {"ece": "ECE (expected calibration error, equal-width bins)",
                      "ece_equal_mass": "ECE, equal-mass bins",
                      "mce": "MCE (maximum calibration error)", "brier": "Brier score",
                      "log_loss": "log loss", "nll": "negative log-likelihood"}


def _is_records(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and isinstance(value[0], Mapping)


def _records_table(out: Report, caption: str, records: Sequence[Mapping[str, Any]]) -> None:
    """A table of dicts that share keys (calibration bins, subgroup rows)."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    out.add_table(caption, columns, [[r.get(c, "") for c in columns] for r in records])


def _calibration(out: Report, calibration: Mapping[str, Any], picture: bytes | None) -> None:
    out.add_section("Calibration")
    out.add_key_values("Calibration of the probabilities", {
        _CALIBRATION_NAMES.get(k, k.replace("_", " ")): v for k, v in calibration.items()
        if not _is_records(v)})
    for key, value in calibration.items():
        if _is_records(value):
            _records_table(out, key.replace("_", " "), value)
    if picture is not None:
        out.add_image("Reliability diagram: the observed share of positives against the mean "
                      "predicted probability, per bin.", picture,
                      "Reliability diagram of the predicted probabilities")


# The columns of a subgroup table, in this order when a group's metrics hold them.
_GROUP_COLUMNS = {"n": "scans", "n_covid": "covid", "n_non_covid": "non-covid", "auc": "AUC",
                  "macro_auc": "macro AUC", "micro_auc": "micro AUC",
                  "sensitivity": "sensitivity", "specificity": "specificity",
                  "f1": "F1 (covid)", "macro_f1": "macro F1", "micro_f1": "micro F1",
                  "accuracy": "accuracy"}
_GROUP_INTERVALS = {"auc": "AUC", "macro_auc": "macro AUC", "macro_f1": "macro F1"}
# Keys of a group's metrics left out of its row: the same for every group, or shown elsewhere.
_GROUP_SKIP = {"threshold", "classes"}


def _group_table(out: Report, by: str, groups: Mapping[str, Mapping[str, Any]]) -> None:
    """One row per group: its counts and metrics, bootstrap intervals when computed, and what
    its data could not define (a one-class group has no AUC) listed under the table."""
    present = list(dict.fromkeys(k for m in groups.values() for k in m))
    columns = [k for k in _GROUP_COLUMNS if k in present]
    columns += [k for k in present if k not in _GROUP_COLUMNS and k not in _GROUP_SKIP
                and all(not isinstance(m.get(k), Mapping | list) for m in groups.values())]
    level = next((m["bootstrap"]["level"] for m in groups.values() if m.get("bootstrap")), None)
    intervals = [k for k in _GROUP_INTERVALS
                 if any(k in (m.get("bootstrap") or {}) for m in groups.values())]
    header = [by, *(_GROUP_COLUMNS.get(k, k) for k in columns),
              *(f"{_GROUP_INTERVALS[k]} {level:.0%} CI" for k in intervals)]
    rows = [[name, *(m.get(k) for k in columns),
             *(_ci((m.get("bootstrap") or {}).get(k)) for k in intervals)]
            for name, m in groups.items()]
    out.add_table(f"Metrics per {by}", header, rows, row_headers=True)
    undefined = [f"{name}: {key}: {reason}" for name, m in groups.items()
                 for key, reason in (m.get("undefined") or {}).items()]
    if undefined:
        out.add_list(undefined, caption="Not defined on a group's scans:")


def _subgroups(out: Report, subgroups: Mapping[str, Any]) -> None:
    """`{"by", "groups": {name: metrics}, "worst", ...}` (what `evaluate --by` records), or
    simply `{name: metrics, ..., "worst"}`."""
    out.add_section("Subgroups")
    if isinstance(subgroups.get("groups"), Mapping):
        by, groups = str(subgroups.get("by") or "subgroup"), subgroups["groups"]
        extra = {k: v for k, v in subgroups.items()
                 if k not in ("by", "groups", "counts", "worst") and not isinstance(v, Mapping)}
    else:
        by, extra = "subgroup", {}
        groups = {k: v for k, v in subgroups.items() if k != "worst" and isinstance(v, Mapping)}
    if groups:
        _group_table(out, by, groups)
    worst = subgroups.get("worst")
    if isinstance(worst, Mapping) and "group" in worst:
        metric = _GROUP_COLUMNS.get(str(worst.get("metric")), worst.get("metric"))
        value = f" ({metric} {text_of(worst['value'])})" if "value" in worst else ""
        out.add_text(f"The worst {by}: {worst['group']}{value}.")
    elif worst is not None:
        out.add_text(f"The worst {by}: {text_of(worst)}.")
    if extra:
        out.add_key_values(f"Over the {by} groups",
                           {k.replace("_", " "): v for k, v in extra.items()})


def _scans_section(out: Report, scans: list[_Scan], classes: Sequence[str],
                   threshold: float | None, max_thumbnails: int) -> None:
    out.add_section("Scans")
    errors = sum(s.error for s in scans)
    shown = sum(s.thumbnail is not None for s in scans[:max_thumbnails])
    out.add_text(f"{len(scans)} scans, {errors} misclassified. Errors come first, then the "
                 "correct scans, each the most confident first (the highest probability given "
                 "to the predicted class). "
                 + (f"Thumbnails ({shown}) show the axial slice with the most lung of the "
                    "volume the model saw." if shown else ""))
    binary = threshold is not None and len(classes) == 2
    probability_columns = ([f"probability of {classes[1]}"] if binary
                           else [f"p({c})" for c in classes])
    rows = []
    for i, s in enumerate(scans):
        picture: Cell = ""
        if s.thumbnail is not None and i < max_thumbnails:
            picture = Picture(s.thumbnail, f"axial slice of {s.path}")
        probs = ([s.probabilities[classes[1]]] if binary
                 else [s.probabilities.get(c) for c in classes])
        rows.append([i + 1, picture, s.path, s.label, s.predicted,
                     "error" if s.error else "correct", *probs])
    out.add_table("Each scan's label and prediction (errors shaded)",
                  ["#", "slice", "path", "label", "predicted", "outcome",
                   *probability_columns], rows, flagged=[s.error for s in scans])


def _explanations(out: Report, scans: list[_Scan], maps: Mapping[str, bytes]) -> None:
    shown = [s for s in scans if s.error and s.path in maps]
    shown += [s for s in scans if not s.error and s.path in maps]
    if not shown:
        return
    out.add_section("Explanation maps")
    out.add_text("Where each model looked, for the misclassified scans first (in the order of "
                 "the scan table).")
    for s in shown:
        outcome = "misclassified" if s.error else "correct"
        out.add_image(f"{s.path}: label {s.label}, predicted {s.predicted} ({outcome}).",
                      maps[s.path], f"Explanation map of {s.path}")


def evaluation_report(report_dict: Mapping[str, Any], *, roc_png: bytes | None = None,
                      reliability_png: bytes | None = None,
                      scans: Sequence[Mapping[str, Any]] | None = None,
                      explain_pngs: Mapping[str, bytes] | None = None,
                      max_thumbnails: int = MAX_THUMBNAILS) -> Report:
    """The report of an evaluation: what `EvalReport.to_dict()` (or `evaluate --json`) holds.

    Its configuration (model, members, classes, data, split, threshold and its source,
    preprocessing when the dict records it), the metrics (two classes: AUC, F1, macro F1,
    sensitivity, specificity, accuracy, with bootstrap intervals; more: per class and macro /
    micro), the confusion matrix as a table and a picture, `roc_png`, the calibration figures
    under `metrics["calibration"]` with `reliability_png`, the subgroups under
    `report_dict["subgroups"]`, the notes, and the per-scan table of `scans`
    (`{path, label, probability or probabilities, predicted, thumbnail_png}`, as
    `EvalReport.scan_rows` gives them), errors first; `explain_pngs` (scan path -> PNG) shows
    their explanation maps.
    """
    classes = list(report_dict.get("classes") or ["non-covid", "covid"])
    metrics = report_dict["metrics"]
    threshold = _threshold_value(report_dict)
    model = Path(str(report_dict.get("model", "model"))).name
    split = report_dict.get("split")
    out = Report(f"Evaluation of {model} on " + ("every labelled scan" if split == "all"
                                                 else f"the {split} split"),
                 subtitle=f"data: {report_dict.get('data')}")
    out.add_text(_summary(report_dict))
    out.add_section("Configuration")
    out.add_key_values("What was evaluated, and how", _configuration(report_dict))
    out.add_section("Metrics")
    if threshold is None:
        _multiclass_metrics(out, metrics)
    else:
        _binary_metrics(out, metrics)
    out.add_section("Confusion matrix")
    _confusion(out, metrics, classes)
    if roc_png is not None:
        out.add_section("ROC curve")
        out.add_image("ROC curve" + ("s, one class against the rest" if threshold is None
                                     else ", with the operating point of the threshold") + ".",
                      roc_png, "ROC curve" + ("s of each class against the rest"
                                              if threshold is None else f" of {model}"))
    if metrics.get("calibration"):
        _calibration(out, metrics["calibration"], reliability_png)
    elif reliability_png is not None:
        out.add_section("Calibration")
        out.add_image("Reliability diagram.", reliability_png, "Reliability diagram")
    if report_dict.get("subgroups"):
        _subgroups(out, report_dict["subgroups"])
    notes = [*report_dict.get("notes", []),
             *(f"{k}: {v}" for k, v in metrics.get("undefined", {}).items())]
    failed = report_dict.get("failed") or []
    if notes or failed:
        out.add_section("Notes")
        if notes:
            out.add_list(notes)
        if failed:
            out.add_table("Scans that could not be read (left out)", ["scan", "reason"],
                          [[f["source"], f["reason"]] for f in failed])
    ordered = _ordered([_scan(s, classes, threshold) for s in scans or []])
    if ordered:
        _scans_section(out, ordered, classes, threshold, max_thumbnails)
        _explanations(out, ordered, explain_pngs or {})
    return out


# --- the cross-validation report ---------------------------------------------------------------

_CV_METRICS = ("auc", "f1", "macro_f1", "accuracy", "sensitivity", "specificity")
_CV_NAMES = {"auc": "AUC", "f1": "F1 (covid)", "macro_f1": "macro F1", "accuracy": "accuracy",
             "sensitivity": "sensitivity", "specificity": "specificity"}


def _cv_columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str | None]]:
    """The metric columns of fold rows: `(key, class)` pairs, a class for per-class dicts."""
    columns: list[tuple[str, str | None]] = [
        (k, None) for k in _CV_METRICS if any(k in r for r in rows)]
    for key in ("per_class_auc", "per_class_f1"):
        names = list(dict.fromkeys(n for r in rows for n in r.get(key, {})))
        columns += [(key, n) for n in names]
    return columns


def _cv_header(key: str, name: str | None) -> str:
    if name is None:
        return _CV_NAMES.get(key, key)
    return f"{'AUC' if key == 'per_class_auc' else 'F1'} {name}"


def _cv_value(row: Mapping[str, Any], key: str, name: str | None) -> Any:
    return row.get(key) if name is None else row.get(key, {}).get(name)


def cv_report(summary: Mapping[str, Any]) -> Report:
    """The report of a cross-validation study: what `cv.json` holds (`cv.cross_validate`): the
    study's settings, one row per fold, the mean ± standard deviation over folds, the pooled
    out-of-fold figures of each repeat, the threshold and the notes."""
    backbone = summary.get("backbone", "model")
    folds, repeats = summary.get("folds"), summary.get("repeats")
    title = f"Cross-validation of {backbone}"
    if folds:
        title += f": {folds} folds" + (f" x {repeats} repeats" if (repeats or 1) > 1 else "")
    out = Report(title, subtitle=f"study: {summary.get('out')}")
    if summary.get("interrupted"):
        out.add_text(f"The study was interrupted after {summary.get('folds_done', 0)} finished "
                     "fold(s): run the same command again to continue it.")
        return out
    settings: dict[str, Any] = {"backbone": backbone, "classes": summary.get("classes"),
                                "folds": folds, "repeats": repeats}
    threshold = summary.get("threshold")
    if threshold:
        settings["threshold"] = (f"{format_number(threshold['value'])} ({threshold['source']}"
                                 + (f": {threshold['note']}" if threshold.get("note") else "")
                                 + ")")
    settings["out-of-fold predictions"] = summary.get("oof")
    settings["ensemble of the folds"] = summary.get("ensemble")
    out.add_section("Study")
    out.add_key_values("The study's settings and files",
                       {k: v for k, v in settings.items() if v is not None})
    fold_rows = summary.get("fold_metrics") or []
    columns = _cv_columns(fold_rows)
    if fold_rows:
        out.add_section("Folds")
        out.add_table("Each fold's model on its own held-out part (its val scans)",
                      ["repeat", "fold", "scans", "best epoch",
                       *(_cv_header(k, n) for k, n in columns), "run"],
                      [[r.get("repeat"), r.get("fold"), r.get("n_val"), r.get("best_epoch"),
                        *(_cv_value(r, k, n) for k, n in columns), r.get("run")]
                       for r in fold_rows])
    mean_std = summary.get("mean_std") or {}
    if mean_std:
        out.add_table("Mean ± standard deviation over the folds (sample standard deviation)",
                      ["metric", "mean ± std", "folds"],
                      [[_CV_NAMES.get(k, k),
                        f"{format_number(v['mean'])} ± {format_number(v['std'])}", v["folds"]]
                       for k, v in mean_std.items()], row_headers=True)
    pooled = summary.get("pooled_oof") or []
    if pooled:
        pooled_columns = _cv_columns(pooled)
        out.add_section("Pooled out-of-fold predictions")
        out.add_table("Every scan predicted once per repeat, by the model that did not see it",
                      ["repeat", "scans", *(_cv_header(k, n) for k, n in pooled_columns)],
                      [[r.get("repeat"), r.get("n"),
                        *(_cv_value(r, k, n) for k, n in pooled_columns)] for r in pooled])
    if summary.get("notes"):
        out.add_section("Notes")
        out.add_list(summary["notes"])
    return out


def compare_report(result: Mapping[str, Any]) -> Report:
    """The report of a comparison: what `compare --json` holds (`compare.CompareReport`): the
    scans, each model's AUC with its intervals, each pair's tests, and the notes."""
    binary = result.get("task") == "binary"
    out = Report(f"Comparison of {len(result.get('models') or [])} models",
                 subtitle=f"{result.get('data')} ({result.get('split')})")
    out.add_section("Scans")
    out.add_key_values("Every model was scored on these scans", {
        "data": result.get("data"), "split": result.get("split"),
        "classes": result.get("classes"), "scans": result.get("n"),
        "per class": result.get("support"),
        "scans left out (a model could not read them)": len(result.get("failed") or []),
        "bootstrap": result.get("bootstrap")})
    out.add_section("Models")
    out.add_table(
        "Each model's AUC" + ("" if binary else " (macro one-vs-rest)")
        + " with its 95% intervals, and the accuracy at its decision rule",
        ["model", "kind", "AUC", "DeLong interval", "bootstrap interval", "threshold",
         "accuracy"],
        [[m.get("name"), m.get("kind"), m.get("auc"), _ci(m.get("delong_ci")),
          _ci(m.get("bootstrap_ci")),
          None if not m.get("threshold") else m["threshold"].get("value"), m.get("accuracy")]
         for m in result.get("models") or []], row_headers=True)
    rows = []
    for pair in result.get("pairs") or []:
        delong, mcnemar, boot = pair.get("delong"), pair.get("mcnemar"), pair.get("bootstrap")
        rows.append([f"{pair.get('a')} vs {pair.get('b')}", pair.get("difference"),
                     None if not delong else delong.get("p"), _ci(None if not delong
                                                                 else delong.get("ci")),
                     None if not mcnemar else f"b {mcnemar['b']}, c {mcnemar['c']}",
                     None if not mcnemar else mcnemar.get("p"),
                     None if not boot else boot.get("p"), _ci(None if not boot
                                                              else boot.get("ci"))])
    if rows:
        out.add_section("Pairs")
        out.add_table("The AUC difference of each pair (A - B) and its tests: DeLong, McNemar "
                      "(b: scans only A got right, c: only B), the paired bootstrap",
                      ["pair", "AUC difference", "DeLong p", "DeLong interval",
                       "McNemar counts", "McNemar p", "bootstrap p", "bootstrap interval"],
                      rows, row_headers=True)
    if result.get("notes"):
        out.add_section("Notes")
        out.add_list(result["notes"])
    return out


__all__ = ["MAX_THUMBNAILS", "THUMBNAIL_PX", "Picture", "Report", "compare_report",
           "confusion_matrix_png", "cv_report", "evaluation_report", "text_of",
           "thumbnail_png", "thumbnail_slice"]
