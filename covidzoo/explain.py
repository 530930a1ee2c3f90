"""Explanations: where in a scan a checkpoint finds the evidence for its score (Grad-CAM).

Grad-CAM (Selvaraju et al., 2017) on the backbone's last feature map `A` (`forward_features`,
the timm API): the score is the explained class's logit computed from `A` by `forward_head`;
each channel's weight is its gradient averaged over the map's cells, and the map is
`ReLU(sum_c w_c A_c)`, upsampled to the model input (trilinear; bilinear per slice) and divided
by its peak, so it lies in [0, 1] and 0 means "no evidence for the class here".

- 3D backbones (the `volume` aggregator, or none): one map per scan.
- Slice models (a 2D backbone under a slice aggregator): every input slice is explained by its
  own logit, the one the aggregator pools (`slice_logits`); the maps of all slices share one
  scale, so slices with strong evidence dominate. Each slice's probability is reported at its
  source slice number (`Geometry.source_slices`).

The score of a binary model is the covid logit (for a 2-output model the covid log-odds,
`logit_covid - logit_non_covid`); of a multi-class one, the predicted class's logit or the
one asked for. The map is carried back to the scan's own voxel grid through the preprocessing
geometry: the input shows the source `box` (all of the input, or for `fit=pad` the part that
is not padding), and outside that box the map is 0. So `NAME.npy` has the scan's shape in the
readers' canonical axes, and for a NIfTI input `NAME.nii.gz` holds it in the input file's own
voxel order and affine, ready to overlay in any viewer.

Grad-CAM shows where the last feature map's evidence for the class lies, at that map's coarse
resolution (a 3D RegNet's is 1/32 of the input per axis); it is not a segmentation of lesions
and it does not say why that place raised the score.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.preprocess import Geometry, prepare_scan
from .data.volume import Volume
from .errors import BadInputError, one_line
from .factory import spatial_dims
from .fileio import atomic_write_bytes
from .inference import Member, is_ensemble_file, load_member, logits_to_probs
from .transforms import to_model_input

PathLike = str | os.PathLike[str]

METHOD = "grad-cam"
TOP_SLICES = 5  # the slices a slice model's strip plot marks and the JSON lists as top
DEFAULT_SLICE_CHUNK = 32  # slices through a 2D backbone at once when its aggregator sets none


# --- Grad-CAM ----------------------------------------------------------------------------------


class Cam(NamedTuple):
    """What `grad_cam` gives: the maps, the logits, and the feature map's spatial size."""

    heat: torch.Tensor  # N x spatial of the input, float32, not normalised
    logits: torch.Tensor  # N x K, float32
    cells: tuple[int, ...]  # the feature map's spatial size


def grad_cam(backbone: nn.Module, x: torch.Tensor,
             score: Callable[[torch.Tensor], torch.Tensor], name: str | None = None) -> Cam:
    """Grad-CAM maps of the inputs `x` (`N x C x spatial`), with the backbone's logits.

    `backbone` follows the timm API: `forward_features(x)` gives `N x C' x spatial'`,
    `forward_head(features)` the logits `N x K`; `score(logits)` is the `N` scores explained.
    The maps are `ReLU(sum_c w_c A_c)` upsampled to `x`'s spatial size, not normalised (maps
    explained together share one scale). Only the head is differentiated: the feature map is
    computed without gradients. Features without `x`'s spatial dims are bad input naming the
    backbone (`name`, else its class).
    """
    name = name or type(backbone).__name__
    with torch.no_grad():
        features = backbone.forward_features(x)
    if features.ndim != x.ndim:
        raise BadInputError(
            f"backbone '{name}': forward_features gives {features.ndim}-D features "
            f"{tuple(features.shape)}, not the {x.ndim - 2} spatial dims of its input: no map "
            "to carry back to the scan")
    features = features.detach().float().requires_grad_()
    with torch.enable_grad():
        logits = backbone.forward_head(features)
        (grads,) = torch.autograd.grad(score(logits.float()).sum(), features, allow_unused=True)
    if grads is None:
        raise BadInputError(f"backbone '{name}': its forward_head does not depend on the "
                            "feature map (no gradient to weight it by)")
    spatial = tuple(range(2, features.ndim))
    weights = grads.mean(dim=spatial, keepdim=True)
    cam = torch.relu((weights * features.detach()).sum(dim=1, keepdim=True))
    mode = "trilinear" if x.ndim == 5 else "bilinear"
    cam = F.interpolate(cam, size=tuple(x.shape[2:]), mode=mode, align_corners=False)
    return Cam(cam[:, 0], logits.detach().float(), tuple(features.shape[2:]))


def normalised(heat: np.ndarray) -> np.ndarray:
    """`heat` divided by its peak (float32, in [0, 1]); all zeros stay zeros."""
    heat = np.asarray(heat, dtype=np.float32)
    peak = float(heat.max()) if heat.size else 0.0
    return heat / np.float32(peak) if peak > 0 else np.zeros_like(heat)


def class_score(num_classes: int, target: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The score explained for class index `target` from `B x num_classes` logits: the logit
    of a one-output model (negated for the negative class), the log-odds of a two-output one,
    a multi-class model's own logit for the class."""
    if num_classes == 1:
        sign = 1.0 if target == 1 else -1.0
        return lambda logits: sign * logits[:, 0]
    if num_classes == 2:
        return lambda logits: logits[:, target] - logits[:, 1 - target]
    return lambda logits: logits[:, target]


def class_probability(probs: torch.Tensor, target: int) -> torch.Tensor:
    """The probability of class `target` per row of `logits_to_probs`' output (covid
    probabilities `B`, or class probabilities `B x K`)."""
    if probs.ndim == 2:
        return probs[:, target]
    return probs if target == 1 else 1 - probs


# --- from the model input back to the scan ------------------------------------------------------


def to_scan_grid(heat: np.ndarray, shape: Sequence[int], box: Sequence[Sequence[int]],
                 offset: Sequence[int] = (0, 0, 0), extent: Sequence[int] | None = None,
                 ) -> np.ndarray:
    """A map on the model input (`D x H x W`) carried to the scan's grid (`shape`): the part at
    `offset` of size `extent` (default: all of it) resized (trilinear, as preprocessing resized
    the other way) onto the source `box`; 0 outside the box."""
    extent = tuple(heat.shape) if extent is None else tuple(extent)
    part = heat[tuple(slice(o, o + e) for o, e in zip(offset, extent, strict=True))]
    size = tuple(int(hi) - int(lo) for lo, hi in box)
    if part.shape != size:
        with torch.no_grad():
            part = F.interpolate(torch.from_numpy(np.ascontiguousarray(part))[None, None],
                                 size=size, mode="trilinear", align_corners=False)[0, 0].numpy()
    out = np.zeros(tuple(int(s) for s in shape), dtype=np.float32)
    out[tuple(slice(int(lo), int(hi)) for lo, hi in box)] = part
    return out


def slice_scores(probs: Sequence[float], geometry: Geometry) -> list[dict[str, Any]]:
    """Each input slice's probability at its source slice (padding slices left out), in input
    order: `[{"slice", "probability"}]`."""
    return [{"slice": int(s), "probability": float(p)}
            for s, p in zip(geometry.source_slices, probs, strict=True) if s >= 0]


def top_slices(slices: Sequence[dict[str, Any]], k: int = TOP_SLICES) -> list[int]:
    """The `k` source slices with the highest probability (each source slice once: the best
    input slice showing it), best first."""
    best: dict[int, float] = {}
    for item in slices:
        best[item["slice"]] = max(best.get(item["slice"], -1.0), item["probability"])
    return [s for s, _ in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


# --- explaining one scan -------------------------------------------------------------------------


@dataclass
class ScanMap:
    """The explanation of one scan, on its own grid.

    `heat`: float32 in [0, 1], the scan's shape, canonical axes; `peak`: its maximum (z, y, x),
    None when the map is zero everywhere (no evidence for the class anywhere); `explained`: the
    class whose score is explained, `probability` its probability; `label`: the predicted
    label; `feature_shape`: the spatial size of the feature map the evidence was read from;
    `slices`: for a slice model, each input slice's probability at its source slice
    (`slice_scores`).
    """

    heat: np.ndarray
    peak: tuple[int, int, int] | None
    explained: str
    probability: float
    label: str
    geometry: Geometry
    feature_shape: tuple[int, ...]
    slices: list[dict[str, Any]] | None = None


class Explainer:
    """Grad-CAM for one loaded checkpoint (`inference.load_member`), for its predicted class
    or the class `class_name` (one of the checkpoint's classes).

    A model with no usable layer is bad input naming the backbone and what it lacks: no
    `forward_features`/`forward_head` (the timm API), or features with no spatial dims. An
    aggregator other than `volume` and the slice aggregators cannot be explained generically.
    """

    def __init__(self, member: Member, class_name: str | None = None) -> None:
        from .models.aggregators import SliceAggregator
        from .models.aggregators import Volume as VolumeAggregator

        self.member = member
        model, spec = member.model, member.spec
        if isinstance(model, SliceAggregator):
            self.slices, self.backbone = True, model.backbone
        elif isinstance(model, VolumeAggregator):
            self.slices, self.backbone = False, model.backbone
        elif spec.aggregator is None and spatial_dims(spec.backbone) == 3:
            self.slices, self.backbone = False, model
        else:
            raise BadInputError(f"{member.path}: aggregator '{spec.aggregator}' is not one "
                                "explain knows (volume, or a slice aggregator)")
        lacking = [a for a in ("forward_features", "forward_head")
                   if not callable(getattr(self.backbone, a, None))]
        if lacking:
            raise BadInputError(f"backbone '{spec.backbone}' has no {' or '.join(lacking)}: "
                                "Grad-CAM needs the timm API's last feature map")
        classes = member.classes
        if class_name is not None and class_name not in classes:
            raise BadInputError(f"--class: '{class_name}' is not one of the checkpoint's "
                                f"classes ({', '.join(classes)})")
        self.fixed = None if class_name is None else classes.index(class_name)
        self.threshold = 0.5 if spec.threshold is None else float(spec.threshold)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.member.classes

    def target(self, probs: torch.Tensor) -> int:
        """The class index explained: `--class`, else the covid class of a binary model, else
        the predicted class."""
        if self.fixed is not None:
            return self.fixed
        return 1 if self.member.binary else int(probs.argmax())

    def label(self, probs: torch.Tensor) -> str:
        """The predicted label: at the stored threshold (0.5 without one), or the most probable
        class."""
        if self.member.binary:
            return self.classes[int(float(probs) >= self.threshold)]
        return self.classes[int(probs.argmax())]

    def explain(self, volume: Volume, prepared: tuple[np.ndarray, Geometry] | None = None,
                ) -> ScanMap:
        """The map of `volume`. `prepared` is `prepare_scan(volume, <the checkpoint's
        preprocessing>)` when already done."""
        cfg = self.member.preprocess
        array, geometry = prepare_scan(volume, cfg) if prepared is None else prepared
        batch = torch.from_numpy(array)[None, None]
        probs = self.member.probs(batch).cpu()  # what `predict` reports
        target = self.target(probs[0])
        x = to_model_input(batch.to(self.member.device))
        score = class_score(self.member.num_classes, target)
        name = self.member.spec.backbone
        slices = None
        if self.slices:
            model = self.member.model
            cams, slice_probs = [], []
            # Eval mode: every slice, with the channels the backbone takes.
            for chunk in model.slices(x).split(model.slice_chunk or DEFAULT_SLICE_CHUNK):
                cam = grad_cam(self.backbone, chunk, score, name)
                cams.append(cam.heat.cpu())
                slice_probs += class_probability(
                    logits_to_probs(cam.logits, self.member.num_classes), target).tolist()
            heat = torch.cat(cams).numpy()
            slices = slice_scores(slice_probs, geometry)
        else:
            cam = grad_cam(self.backbone, x, score, name)
            heat = cam.heat[0].cpu().numpy()
        heat = normalised(to_scan_grid(heat, volume.shape, geometry.box, geometry.offset,
                                       geometry.extent))
        peak = None if not heat.any() else tuple(
            int(i) for i in np.unravel_index(int(heat.argmax()), heat.shape))
        return ScanMap(heat, peak, self.classes[target],  # type: ignore[arg-type]
                       float(class_probability(probs, target)[0]), self.label(probs[0]),
                       geometry, cam.cells, slices)


class EnsembleExplainer:
    """Grad-CAM of an ensemble file: each member's map of the class the ensemble explains (the
    covid class, or the ensemble's predicted class, or `--class`), normalised, then averaged on
    the scan's grid (each member counting the same, as the mean fusion does); the probability
    and label are the ensemble's. Slice scores are the members' mean where every member is a
    slice model."""

    def __init__(self, predictor: Any, class_name: str | None = None) -> None:
        self.predictor = predictor
        self.parts = [Explainer(m, class_name) for m in predictor.members]
        self.member = predictor.members[0]  # what the pictures are windowed and sized by
        self.slices = all(part.slices for part in self.parts)
        self.fixed = self.parts[0].fixed
        self.threshold = 0.5 if predictor.threshold is None else float(predictor.threshold)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.predictor.classes)

    def explain(self, volume: Volume, prepared: tuple[np.ndarray, Geometry] | None = None,
                ) -> ScanMap:
        """The members' mean map of `volume` (each member prepares it as it was trained)."""
        batches = []
        for part in self.parts:
            array, _ = prepare_scan(volume, part.member.preprocess)
            batches.append(part.member.probs(torch.from_numpy(array)[None, None]).cpu())
        fused = self.predictor.fuse(np.stack([b.double().numpy() for b in batches], axis=1))[0]
        binary = len(self.classes) == 2
        target = self.fixed if self.fixed is not None else 1 if binary else int(fused.argmax())
        maps = []
        for part in self.parts:
            part.fixed = target
            maps.append(part.explain(volume))
        heat = normalised(np.mean([m.heat for m in maps], axis=0).astype(np.float32))
        peak = None if not heat.any() else tuple(
            int(i) for i in np.unravel_index(int(heat.argmax()), heat.shape))
        probability = float(fused) if binary else float(fused[target])
        label = (self.classes[int(probability >= self.threshold)] if binary
                 else self.classes[int(fused.argmax())])
        slices = None
        if self.slices and all(m.slices for m in maps):
            by_slice: dict[int, list[float]] = {}
            for m in maps:
                for item in m.slices or ():
                    by_slice.setdefault(item["slice"], []).append(item["probability"])
            slices = [{"slice": k, "probability": float(np.mean(v))}
                      for k, v in sorted(by_slice.items())]
        return ScanMap(heat, peak, self.classes[target], probability,  # type: ignore[arg-type]
                       label, maps[0].geometry, maps[0].feature_shape, slices)


# --- outputs -----------------------------------------------------------------------------------


@dataclass
class Explanation:
    """What `explain` wrote for one scan, and the figures it reports."""

    scan: str
    probability: float
    label: str
    explained: str
    files: dict[str, str]
    peak: tuple[int, int, int] | None
    feature_shape: tuple[int, ...]
    slices: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scan": self.scan, "probability": self.probability, "label": self.label,
            "class": self.explained, "files": dict(self.files),
            "peak": None if self.peak is None else list(self.peak),
            "feature_shape": list(self.feature_shape),
        }
        if self.slices is not None:
            out["slices"] = self.slices
            out["top_slices"] = top_slices(self.slices)
        return out


@dataclass
class ExplainReport:
    """The explanations of a checkpoint for some scans; scans that failed, with the reason."""

    model: Path
    backbone: str
    kind: str  # "volume" or "slices"
    explanations: list[Explanation]
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.model), "backbone": self.backbone, "method": METHOD,
            "kind": self.kind, "scans": [e.to_dict() for e in self.explanations],
            "failed": [{"source": s, "reason": r} for s, r in self.failed],
        }


def scan_names(paths: Sequence[PathLike]) -> list[str]:
    """A file name stem per scan (a folder's name; `x.nii.gz` -> `x`), made unique with `-2`,
    `-3`... in order."""
    names: list[str] = []
    for path in map(Path, paths):
        name = path.name
        for suffix in (".nii.gz", ".nii", ".npy", ".npz", ".mha", ".mhd", ".nrrd", ".dcm"):
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
        name = name or "scan"
        unique, k = name, 1
        while unique in names:
            k += 1
            unique = f"{name}-{k}"
        names.append(unique)
    return names


def save_npy(path: PathLike, heat: np.ndarray) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(heat, dtype=np.float32), allow_pickle=False)
    return atomic_write_bytes(path, buffer.getvalue())


def save_nifti_like(path: PathLike, heat: np.ndarray, source: PathLike) -> Path:
    """`heat` (canonical axes, `covidzoo.data.nifti.AXIS_CODES`) written as a gzipped NIfTI in
    the voxel order and affine of the NIfTI file `source`: the inverse of the reader's
    reorientation, so the map overlays the source in any viewer and reads back as `heat`."""
    import nibabel
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    from .data.nifti import AXIS_CODES

    image = nibabel.load(Path(source))
    affine = image.affine
    back = ornt_transform(axcodes2ornt(AXIS_CODES), io_orientation(affine))
    stored = np.ascontiguousarray(apply_orientation(heat, back), dtype=np.float32)
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    out = type(image)(stored, affine, header)  # NIfTI-1 or NIfTI-2, as the source
    out.header["cal_min"], out.header["cal_max"] = 0.0, 1.0
    out.header["descrip"] = b"covidzoo Grad-CAM map"
    return atomic_write_bytes(path, gzip.compress(out.to_bytes(), mtime=0))


# --- the picture ---------------------------------------------------------------------------------

# Inferno (perceptually uniform, readable in grey and by colour-blind readers), by 5 anchors.
HEAT_COLOURS = ((0.0, (0, 0, 4)), (0.25, (87, 16, 110)), (0.5, (188, 55, 84)),
                (0.75, (249, 142, 9)), (1.0, (252, 255, 164)))
HEAT_ALPHA = 0.65  # the map's opacity at its peak; it fades with the map towards 0
PANEL_SIZE = 320  # pixels given to the longest physical extent of the scan
STRIP_WIDTH = 170
MARGIN, GAP = 24, 20
TEXT, NOTE = (235, 235, 235), (170, 170, 170)
TICK = (240, 228, 66)  # Okabe-Ito yellow: where the peak lies
TOP = (86, 180, 233)  # Okabe-Ito sky blue: the top slices


def heat_colours(values: np.ndarray) -> np.ndarray:
    """RGB (uint8, one more axis of 3) of map values in [0, 1]."""
    stops = [s for s, _ in HEAT_COLOURS]
    v = np.clip(values, 0.0, 1.0)
    return np.stack([np.interp(v, stops, [c[k] for _, c in HEAT_COLOURS]) for k in range(3)],
                    axis=-1).astype(np.uint8)


def _blend(grey: np.ndarray, heat: np.ndarray, size: tuple[int, int]) -> Any:
    """The cut `grey` (uint8) with `heat` blended over it, resized to `size` (w, h)."""
    from PIL import Image

    g = np.asarray(Image.fromarray(np.ascontiguousarray(grey)).resize(size, Image.BILINEAR),
                   dtype=np.float32)[..., None]
    h = np.clip(np.asarray(Image.fromarray(np.ascontiguousarray(heat, dtype=np.float32), "F")
                           .resize(size, Image.BILINEAR)), 0.0, 1.0)
    alpha = (HEAT_ALPHA * h)[..., None]
    rgb = g * (1 - alpha) + heat_colours(h).astype(np.float32) * alpha
    return Image.fromarray((rgb + 0.5).astype(np.uint8), "RGB")


def _grey(volume: Volume, window: tuple[float, float]) -> tuple[np.ndarray, str]:
    if volume.intensity == "uint8":
        return (np.clip(volume.array, 0, 255).astype(np.uint8),
                "window: none, 8-bit slices shown as stored")
    level, width = window
    unit = np.clip((volume.array - (level - width / 2)) / width, 0.0, 1.0)
    return ((unit * 255 + 0.5).astype(np.uint8),
            f"window: level {level:g} HU, width {width:g} HU (the model's)")


def explanation_png(volume: Volume, found: ScanMap, window: tuple[float, float],
                    lines: Sequence[str], threshold: float | None = None) -> Any:
    """An RGB `PIL.Image`: axial, coronal and sagittal cuts through the map's peak (through
    the middle when the map is empty), each with the map blended over the scan and its
    orientation marks, on one physical scale; a colour bar; for a slice model, a strip of the
    slice probabilities beside the cuts, on the coronal cut's vertical axis, the top
    `TOP_SLICES` ringed; `lines` (the first as a title) and notes below."""
    from PIL import Image, ImageDraw

    from .data.montage import ORIENTED
    from .plots import default_font

    grey, window_text = _grey(volume, window)
    heat = found.heat
    d, h, w = volume.shape
    dz, dy, dx = volume.spacing
    k, j, i = found.peak if found.peak is not None else (d // 2, h // 2, w // 2)
    cuts = [  # view, where, grey, heat, height mm, width mm, marks, peak (x, y) as fractions
        ("axial", f"slice {k + 1} of {d}", grey[k], heat[k], h * dy, w * dx,
         ("A", "P", "R", "L"), ((i + 0.5) / w, (j + 0.5) / h)),
        ("coronal", f"row {j + 1} of {h}", np.flipud(grey[:, j]), np.flipud(heat[:, j]),
         d * dz, w * dx, ("S", "I", "R", "L"), ((i + 0.5) / w, 1 - (k + 0.5) / d)),
        ("sagittal", f"column {i + 1} of {w}", np.flipud(grey[:, :, i]),
         np.flipud(heat[:, :, i]), d * dz, h * dy, ("S", "I", "A", "P"),
         ((j + 0.5) / h, 1 - (k + 0.5) / d)),
    ]
    px_per_mm = PANEL_SIZE / max(max(c[4], c[5]) for c in cuts)
    sizes = [(max(1, round(c[5] * px_per_mm)), max(1, round(c[4] * px_per_mm))) for c in cuts]
    title_font, label_font, note_font = default_font(17), default_font(15), default_font(13)
    notes = [
        *lines[1:],
        "cuts through the map's peak" + ("" if found.peak is not None else
                                         " (none: the map is 0 everywhere; middle cuts)")
        + "; yellow ticks mark it",
        window_text,
        "orientation: slices inferior to superior, rows anterior to posterior, columns patient "
        "right to left" + ("" if volume.kind in ORIENTED else " (assumed: the format records "
                           "none)"),
    ]
    if found.slices is not None:
        best = ", ".join(str(s + 1) for s in top_slices(found.slices))
        notes.append(f"strip: each input slice's probability at its source slice, on the "
                     f"coronal cut's vertical axis; rings: the {TOP_SLICES} highest (slices "
                     f"{best}, counted from 1 as in the cuts)"
                     + ("; dashed: the threshold" if threshold is not None else ""))
    header = 74
    panels_h = max(s[1] for s in sizes) + 2 * MARGIN
    cells = [s[0] + 2 * MARGIN for s in sizes]
    strip = STRIP_WIDTH + 2 * MARGIN if found.slices is not None else 0
    bar = 90
    text_w = max([note_font.getlength(n) for n in notes] + [title_font.getlength(lines[0])])
    width = round(max(GAP + sum(c + GAP for c in cells) + strip + bar, text_w + 2 * GAP))
    height = header + panels_h + 10 + 18 * len(notes) + 10
    sheet = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP, 6), lines[0], font=title_font, fill=TEXT)

    x = GAP
    top = header + MARGIN
    for (view, where, g, hm, _, _, marks, (fx, fy)), (w_px, h_px), cell in zip(
            cuts, sizes, cells, strict=True):
        left = x + MARGIN
        sheet.paste(_blend(g, hm, (w_px, h_px)), (left, top))
        draw.text((x + cell / 2, 32), view, font=label_font, fill=TEXT, anchor="ma")
        draw.text((x + cell / 2, 52), where, font=note_font, fill=NOTE, anchor="ma")
        mark_top, mark_bottom, mark_left, mark_right = marks
        draw.text((left + w_px / 2, top - 9), mark_top, font=label_font, fill=TEXT, anchor="md")
        draw.text((left + w_px / 2, top + h_px + 9), mark_bottom, font=label_font, fill=TEXT,
                  anchor="ma")
        draw.text((left - 9, top + h_px / 2), mark_left, font=label_font, fill=TEXT, anchor="rm")
        draw.text((left + w_px + 9, top + h_px / 2), mark_right, font=label_font, fill=TEXT,
                  anchor="lm")
        tx, ty = left + fx * w_px, top + fy * h_px
        for y0, y1 in ((top - 6, top - 1), (top + h_px + 1, top + h_px + 6)):
            draw.line([(tx, y0), (tx, y1)], fill=TICK, width=2)
        for x0, x1 in ((left - 6, left - 1), (left + w_px + 1, left + w_px + 6)):
            draw.line([(x0, ty), (x1, ty)], fill=TICK, width=2)
        x += cell + GAP

    if found.slices is not None:
        _strip(draw, found.slices, (x + MARGIN, top, STRIP_WIDTH, sizes[1][1]), d, threshold,
               label_font, note_font)
        x += strip
    _colour_bar(sheet, draw, (x + 10, top, 16, max(s[1] for s in sizes)), note_font)

    y = header + panels_h + 10
    for note in notes:
        draw.text((GAP, y), note, font=note_font, fill=NOTE)
        y += 18
    return sheet


def _strip(draw: Any, slices: Sequence[dict[str, Any]], box: tuple[int, int, int, int],
           depth: int, threshold: float | None, label_font: Any, note_font: Any) -> None:
    """Slice probabilities as points joined in slice order: probability across, source slice
    up (superior at the top, as in the coronal cut); the top slices ringed and numbered."""
    left, top, width, height = box
    draw.rectangle([left, top, left + width, top + height], outline=NOTE)
    draw.text((left + width / 2, 32), "slice probability", font=label_font, fill=TEXT,
              anchor="ma")
    for value in (0.0, 0.5, 1.0):
        draw.text((left + value * width, top + height + 4), f"{value:g}", font=note_font,
                  fill=NOTE, anchor="ma")
    if threshold is not None:
        tx = left + threshold * width
        for y0 in range(top, top + height, 8):
            draw.line([(tx, y0), (tx, min(y0 + 4, top + height))], fill=NOTE, width=1)

    def point(item: dict[str, Any]) -> tuple[float, float]:
        return (left + item["probability"] * width,
                top + (1 - (item["slice"] + 0.5) / depth) * height)

    ordered = sorted(slices, key=lambda item: item["slice"])
    if len(ordered) > 1:
        draw.line([point(item) for item in ordered], fill=TEXT, width=1)
    for item in ordered:
        px, py = point(item)
        draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=TEXT)
    labelled: list[float] = []
    for s in top_slices(slices):
        p = max(it["probability"] for it in slices if it["slice"] == s)
        px, py = point({"slice": s, "probability": p})
        draw.ellipse([px - 6, py - 6, px + 6, py + 6], outline=TOP, width=2)
        if all(abs(py - other) >= 13 for other in labelled):  # the caption lists them all
            draw.text((px - 9, py), str(s + 1), font=note_font, fill=TOP, anchor="rm")
            labelled.append(py)


def _colour_bar(sheet: Any, draw: Any, box: tuple[int, int, int, int], font: Any) -> None:
    """The map's colours from 0 (bottom) to 1 (top), labelled."""
    from PIL import Image

    left, top, width, height = box
    ramp = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(width, axis=1)
    sheet.paste(Image.fromarray(heat_colours(ramp), "RGB"), (left, top))
    draw.rectangle([left, top, left + width, top + height], outline=NOTE)
    draw.text((left + width / 2, 52), "map", font=font, fill=TEXT, anchor="ma")
    for value in (1.0, 0.5, 0.0):
        y = top + (1 - value) * (height - 1)
        draw.line([(left + width, y), (left + width + 4, y)], fill=NOTE)
        draw.text((left + width + 7, y), "1 (peak)" if value == 1 else f"{value:g}", font=font,
                  fill=NOTE, anchor="lm")


def explain(model: PathLike, scans: Sequence[PathLike], out: PathLike, *,
            device: str | None = None, class_name: str | None = None,
            progress: bool = False) -> ExplainReport:
    """Explain each scan under the checkpoint `model`, writing to the folder `out`, per scan
    NAME (`scan_names`): `NAME.png` (three cuts through the map's peak with the map blended
    over the scan, a colour bar, the probability; a slice model's strip of slice probabilities
    beside them), `NAME.npy` (the map on the scan's grid) and, for a NIfTI scan,
    `NAME.nii.gz` (the map in the scan's own geometry).

    For an ensemble file, the map is the mean of its members' maps of the ensemble's class
    (`EnsembleExplainer`). A scan that does not exist is bad input (checked before anything is
    loaded); a scan that cannot be read is listed in `failed`; when every scan fails that is
    bad input.
    """
    from .progress import progress_bar
    from .runtime import resolve_device

    model, out = Path(model), Path(out)
    if not scans:
        raise BadInputError("give at least one SCAN to explain")
    missing = [str(p) for p in scans if not os.path.exists(p)]
    if missing:
        raise BadInputError(f"no such scan: {', '.join(missing)}")
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out}: exists and is not a folder")
    explainer: Any
    if is_ensemble_file(model):
        from .inference import load_predictor

        predictor = load_predictor(model, resolve_device(device), precision="fp32")
        explainer = EnsembleExplainer(predictor, class_name)
        backbones = ", ".join(sorted({m.spec.backbone for m in predictor.members}))
    else:
        explainer = Explainer(load_member(model, resolve_device(device), precision="fp32"),
                              class_name)
        backbones = explainer.member.spec.backbone
    report = ExplainReport(model, backbones, "slices" if explainer.slices else "volume", [])
    with progress_bar(len(scans), "explaining", enabled=progress, rate_unit="scans") as advance:
        for path, name in zip(scans, scan_names(scans), strict=True):
            found = _explain_one(explainer, Path(path), out, name, report.failed)
            if found is not None:
                report.explanations.append(found)
            advance(1)
    if not report.explanations:
        raise BadInputError(f"every scan failed ({len(report.failed)}); first: "
                            f"{report.failed[0][1]}")
    return report


def _explain_one(explainer: Explainer, path: Path, out: Path, name: str,
                 failed: list[tuple[str, str]]) -> Explanation | None:
    """Explain the scan at `path` and write its files; a scan that cannot be read or
    preprocessed goes to `failed` (the model's own errors are every scan's: they propagate)."""
    from .data.readers import read_scan

    try:
        volume = read_scan(path)
        prepared = prepare_scan(volume, explainer.member.preprocess)
    except BadInputError as exc:
        failed.append((str(path), one_line(exc)))
        return None
    found = explainer.explain(volume, prepared)
    files = {"png": str(out / f"{name}.png"), "npy": str(out / f"{name}.npy")}
    save_npy(files["npy"], found.heat)
    if volume.kind == "nifti":
        files["nifti"] = str(save_nifti_like(out / f"{name}.nii.gz", found.heat, volume.source))
    image = explanation_png(
        volume, found, window=explainer.member.preprocess.window,
        lines=[f"{name}: Grad-CAM of '{found.explained}' under "
               f"{getattr(explainer, 'predictor', explainer.member).path.name}",
               *_caption(explainer, found)],
        threshold=explainer.threshold if len(explainer.classes) == 2 else None)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(files["png"], buffer.getvalue())
    return Explanation(str(path), found.probability, found.label, found.explained, files,
                       found.peak, found.feature_shape, found.slices)


def _caption(explainer: Any, found: ScanMap) -> list[str]:
    spec = explainer.member.spec
    cells = " x ".join(map(str, found.feature_shape))
    ensemble = isinstance(explainer, EnsembleExplainer)
    if len(explainer.classes) == 2:
        decided = f"label {found.label} at threshold {explainer.threshold:.3g}" + (
            "" if spec.threshold is not None else " (the checkpoint stores none)")
    else:
        decided = f"predicted class {found.label}"
    where = ("each slice's map from its own logit, all on one scale" if explainer.slices
             else "one map for the volume")
    if ensemble:
        where += f"; the mean of the {len(explainer.parts)} members' maps, each normalised"
    flat = int(np.prod(found.feature_shape)) == 1
    return [
        f"probability of {found.explained}: {found.probability:.3f}; {decided}",
        f"Grad-CAM of the {found.explained} score on {spec.backbone}'s last feature map "
        f"({cells} cells{' per slice' if explainer.slices else ''}"
        f"{': one cell, no place told from another' if flat else ''}), {where}, upsampled to "
        "the model input and carried to the scan's grid; 0 where the model saw nothing",
        "where the evidence for the class lies, at the feature map's resolution: not a "
        "segmentation, and not why",
    ]


__all__ = [
    "EnsembleExplainer",
    "METHOD",
    "TOP_SLICES",
    "ExplainReport",
    "Explainer",
    "Explanation",
    "ScanMap",
    "class_score",
    "explain",
    "grad_cam",
    "normalised",
    "save_nifti_like",
    "save_npy",
    "scan_names",
    "slice_scores",
    "to_scan_grid",
    "top_slices",
]
