"""Inference: checkpoints and ensemble files in, covid probabilities per scan out.

What `evaluate`, `ensemble` and `predict` share:

- `load_predictor(path)` reads a checkpoint (one member) or an `ensemble --save` file (several
  members, a fitted ensembler and its threshold); both answer the same questions.
- Each member is made ready for inference once (`prepare_model`): eval mode, BatchNorm folded
  into the preceding convolutions (exact in eval mode, one pass less over every activation),
  moved to the device, channels-last when the precision mode asks for it. Forward passes run
  under `torch.inference_mode` and the autocast of `resolve_precision(..., mode="infer")`.
- Every member preprocesses scans with the `PreprocessConfig` recorded in its own checkpoint, so
  a 2D model fed 64 x 256 x 256 scans and a 3D model fed 128 x 224 x 224 ones fuse scan by scan.
  Labelled data (`load_eval_data`) goes through the on-disk cache once per distinct config, or
  comes from a cache that `covidzoo data prepare` made when that is every member's config;
  raw scans (`predict_paths`) are read and preprocessed once per distinct config.
- A model is checked against its scan size before anything is read (`check_scan_size`).
- A scan that fails to read is reported with its reason and the others go on.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ._version import __version__
from .checkpoint import ModelSpec, load_checkpoint, read_spec
from .data.preprocess import PreprocessConfig, load_scan
from .data.sources import data_source
from .errors import BadInputError, UnknownComponentError, one_line
from .factory import check_scan_size, get_component, spatial_dims
from .fileio import atomic_write_text
from .plugins import missing_component_message, provenance
from .progress import progress_bar
from .runtime import (
    Precision,
    prepare_model,
    resolve_precision,
    scans_channels_last,
    tune_cudnn,
)
from .transforms import to_model_input, tta_views
from .values import BINARY_CLASSES, check_temperature, is_probability, printable_errors

ENSEMBLE_FORMAT = 1
# An ensemble file is a few member paths and a fitted ensembler (a rank ensembler keeps one
# score per validation scan and member): far less than this, which bounds what is read.
MAX_ENSEMBLE_FILE_BYTES = 64 * 1024**2
# What a model's outputs mean, by their count: one covid logit, or (non-covid, covid) logits.
CLASS_DEFINITIONS: dict[int, str] = {
    1: "1 output (covid logit, sigmoid)",
    2: "2 outputs (non-covid, covid; softmax)",
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def logits_to_probs(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Probabilities from `B x num_classes` logits: for a binary model (see
    `CLASS_DEFINITIONS`) the covid probability per scan (`B`); for three or more classes, every
    class's (`B x K`, softmax)."""
    logits = logits.float().reshape(logits.shape[0], -1)
    if logits.shape[1] != num_classes:
        raise BadInputError(
            f"the model returned {logits.shape[1]} outputs per scan, its checkpoint says "
            f"{num_classes}"
        )
    if num_classes == 1:
        return torch.sigmoid(logits[:, 0])
    if num_classes == 2:
        return torch.softmax(logits, dim=1)[:, 1]
    return torch.softmax(logits, dim=1)


@dataclass
class Member:
    """One model ready for inference, with the spec that says how to feed it."""

    path: Path
    spec: ModelSpec
    model: nn.Module
    precision: Precision
    device: torch.device
    num_classes: int
    tta: str | None = None  # test-time augmentation (`transforms.tta_views`)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names by label, as the checkpoint records them."""
        return tuple(self.spec.classes)

    @property
    def binary(self) -> bool:
        return len(self.spec.classes) == 2

    @property
    def preprocess(self) -> PreprocessConfig:
        """How this member's scans are preprocessed: what its checkpoint recorded."""
        return PreprocessConfig.from_dict(self.spec.preprocess)

    @torch.inference_mode()
    def probs(self, batch: torch.Tensor) -> torch.Tensor:
        """Covid probabilities (float32, on the device) of uint8 scans `B x 1 x D x H x W`;
        for three or more classes, every class's (`B x K`)."""
        dims = spatial_dims(self.spec.backbone)
        x = to_model_input(batch.to(self.device, non_blocking=True),
                           channels_last=scans_channels_last(self.precision, dims))
        views = tta_views(x, self.tta)  # batched on the device: one pass over every view
        with self.precision.autocast(self.device.type):
            logits = self.model(torch.cat(views) if len(views) > 1 else x)
        logits = logits.float()
        if self.spec.temperature is not None:  # `covidzoo calibrate`
            logits = logits / self.spec.temperature
        probs = logits_to_probs(logits, self.num_classes)
        return probs.view(len(views), len(x), *probs.shape[1:]).mean(dim=0)


def load_member(
    path: str | os.PathLike[str], device: torch.device | str = "cpu", precision: str = "auto",
    fold: bool = True,
) -> Member:
    """Load the checkpoint at `path` and prepare its model for inference on `device`.

    Pickle files and files that are not covidzoo safetensors checkpoints raise `BadInputError`
    before anything is deserialised (see `covidzoo.checkpoint.read_spec`); a model too small
    for the scan size it records (`covidzoo.factory.check_scan_size`) does too, before any scan
    is read.
    """
    path, device = Path(path), torch.device(device)
    model, spec = load_checkpoint(path, "cpu")
    try:
        check_scan_size(spec.backbone, PreprocessConfig.from_dict(spec.preprocess).size,
                        spec.model_args, spec.aggregator, spec.aggregator_args)
    except BadInputError as exc:
        raise BadInputError(f"{path}: {exc}") from exc
    num_classes = getattr(model, "num_classes", None) or spec.model_args.get("num_classes", 1)
    if len(spec.classes) > 2:
        if num_classes != len(spec.classes):
            raise BadInputError(f"{path}: a model with {num_classes} outputs for "
                                f"{len(spec.classes)} classes")
    elif num_classes not in CLASS_DEFINITIONS:
        raise BadInputError(
            f"{path}: a model with {num_classes} outputs; covidzoo reads "
            + " or ".join(CLASS_DEFINITIONS.values())
        )
    precision_mode = resolve_precision(precision, device, spec.backbone, mode="infer")
    model = prepare_model(model, device, precision_mode, spatial_dims(spec.backbone), fold=fold)
    tune_cudnn(device)
    return Member(path, spec, model, precision_mode, device, int(num_classes))


def check_members(members: Sequence[Member]) -> None:
    """Members must agree on what their outputs mean before their probabilities are fused."""
    classes = {m.classes for m in members}
    if len(classes) > 1:
        listed = "; ".join(f"{m.path}: {', '.join(m.classes)}" for m in members)
        raise BadInputError(f"members have different classes ({listed})")
    kinds = {m.num_classes for m in members}
    if len(kinds) > 1:
        listed = "; ".join(f"{m.path}: {CLASS_DEFINITIONS[m.num_classes]}" for m in members)
        raise BadInputError(f"members have different class definitions ({listed})")


# --- ensemble files ----------------------------------------------------------------------------


def is_ensemble_file(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is an ensemble JSON file rather than a checkpoint: a `.json` name, or a
    file that starts with `{` (a safetensors file starts with its 8-byte header length). A
    `.safetensors` name is a checkpoint whatever it holds, so that a JSON file renamed so is
    reported as the broken checkpoint it is."""
    path = Path(path)
    if path.suffix.lower() in (".json", ".safetensors"):
        return path.suffix.lower() == ".json"
    try:
        with path.open("rb") as fh:
            return fh.read(64).lstrip()[:1] == b"{"
    except (OSError, ValueError):  # not a readable file: loading it as a checkpoint says why
        return False


def write_ensemble_file(
    path: str | os.PathLike[str], members: Sequence[str | os.PathLike[str]], ensembler: Any,
    threshold: float | None,
) -> Path:
    """Write an ensemble file atomically: member paths relative to its folder where possible,
    so a folder of checkpoints and its ensemble file can move together.

    The file records the provenance of its components (`covidzoo.plugins.provenance`): the
    ensembler's, and each member's backbone and aggregator, in member order.
    """
    path = Path(path)
    folder = path.resolve().parent
    listed = []
    for member in members:
        absolute = Path(member).resolve()
        try:
            listed.append(os.path.relpath(absolute, folder))
        except ValueError:  # another drive (Windows): no relative path exists
            listed.append(str(absolute))
    state = ensembler.to_dict()
    data = {
        "format": ENSEMBLE_FORMAT,
        "members": listed,
        "ensembler": state,
        "threshold": None if threshold is None else float(threshold),  # None: multi-class
        "covidzoo_version": __version__,
        "provenance": {
            "ensembler": _ensembler_provenance(state),
            "members": [_member_provenance(member) for member in members],
        },
    }
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _ensembler_provenance(state: Any) -> dict[str, Any]:
    method = state.get("method") if isinstance(state, dict) else None
    if not isinstance(method, str):
        return {}
    try:
        return provenance(get_component(method, "ensembler"))
    except UnknownComponentError:
        return {}


def _member_provenance(member: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return read_spec(member).with_provenance().provenance
    except BadInputError:  # not a checkpoint: loading it reports that
        return {}


def _recorded(data: dict[str, Any], *keys: Any) -> Any:
    """`data["provenance"][keys[0]][keys[1]]...`, or None where any level is missing."""
    value: Any = data.get("provenance")
    for key in keys:
        if isinstance(value, dict) and isinstance(key, str):
            value = value.get(key)
        elif isinstance(value, list) and isinstance(key, int) and key < len(value):
            value = value[key]
        else:
            return None
    return value


def _check_ensembler(path: Path, data: dict[str, Any]) -> None:
    """An ensembler no loaded plugin provides: the error names the package to install."""
    method = data["ensembler"].get("method") if isinstance(data["ensembler"], dict) else None
    if not isinstance(method, str):
        return  # load_ensembler explains
    try:
        get_component(method, "ensembler")
    except UnknownComponentError as exc:
        message = missing_component_message("ensembler", method,
                                            _recorded(data, "ensembler"), "the ensemble file")
        raise UnknownComponentError(f"{path}: {message or exc}") from exc


def _check_member_components(path: Path, data: dict[str, Any], members: list[str],
                             paths: list[Path]) -> None:
    """Each member's backbone and aggregator must be registered; the provenance its checkpoint
    records (else the ensemble file's record of it) names the package to install."""
    for i, (member, member_path) in enumerate(zip(members, paths, strict=True)):
        try:
            spec = read_spec(member_path)
        except BadInputError:
            continue  # load_member reports it with its reason
        recorded = _recorded(data, "members", i)
        if isinstance(recorded, dict):
            spec.provenance = {**{k: v for k, v in recorded.items() if isinstance(v, dict)},
                               **spec.provenance}
        try:
            spec.check_components()
        except UnknownComponentError as exc:
            raise UnknownComponentError(f"{path}: member {member}: {exc}") from exc


@printable_errors()
def read_ensemble_file(path: str | os.PathLike[str]) -> tuple[list[Path], Any, float | None]:
    """`(member checkpoint paths, fitted ensembler, threshold)` of an ensemble file.

    Every member must exist: a missing one is named in the `BadInputError`. An ensembler, or a
    member's backbone or aggregator, that no loaded plugin provides is an
    `UnknownComponentError` naming the package recorded in the file's provenance.
    """
    path = Path(path)
    return _parse_ensemble(path, _read_json(path))


def _parse_ensemble(path: Path, data: Any) -> tuple[list[Path], Any, float | None]:
    """`read_ensemble_file` of the document `data` read from `path`."""
    from .ensemble import Ensembler, load_ensembler

    if not isinstance(data, dict) or "members" not in data or "ensembler" not in data:
        raise BadInputError(f"{path}: not a covidzoo ensemble file (no members and ensembler)")
    if data.get("format") != ENSEMBLE_FORMAT or isinstance(data.get("format"), bool):
        raise BadInputError(
            f"{path}: ensemble file format {data.get('format')!r:.40}, expected {ENSEMBLE_FORMAT}"
        )
    members, paths = _member_paths(path, data["members"])
    _check_ensembler(path, data)
    _check_member_components(path, data, members, paths)
    try:
        ensembler = load_ensembler(data["ensembler"])
    except UnknownComponentError:
        raise
    except BadInputError as exc:
        raise BadInputError(f"{path}: {exc}") from None
    n_models = getattr(ensembler, "n_models", None)
    if n_models is None and isinstance(ensembler, Ensembler):
        raise BadInputError(f"{path}: the ensembler '{ensembler.method}' was never fit "
                            "(no n_models); write the file with `covidzoo ensemble --save`")
    if n_models is not None and n_models != len(paths):
        raise BadInputError(f"{path}: the ensembler was fit on {n_models} members, "
                            f"the file lists {len(paths)}")
    return paths, ensembler, _ensemble_threshold(path, data.get("threshold"))


def _read_json(path: Path) -> Any:
    """The JSON document at `path`; a missing, huge, binary or malformed file is bad input."""
    try:
        if path.stat().st_size > MAX_ENSEMBLE_FILE_BYTES:
            raise BadInputError(f"{path}: {path.stat().st_size:,} bytes, too large for an "
                                f"ensemble file (at most {MAX_ENSEMBLE_FILE_BYTES:,})")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BadInputError(f"{path}: no such ensemble file") from exc
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadInputError(f"{path}: not an ensemble JSON file "
                            f"({one_line(exc, with_type=False)})") from None


def _member_paths(path: Path, members: Any) -> tuple[list[str], list[Path]]:
    """The member checkpoints an ensemble file lists, each an existing file.

    Relative paths are read from the file's folder, and may leave it (`../runs/a/best...`):
    `write_ensemble_file` writes them so when the checkpoints live elsewhere, and absolute ones
    when no relative path exists. A member is only ever read as a safetensors checkpoint
    (checked before it is parsed, never unpickled), so a path can choose which checkpoint is
    loaded and nothing more: as a checkpoint named on the command line can.
    """
    if not isinstance(members, list) or not members or not all(
        isinstance(m, str) and m.strip() for m in members
    ):
        raise BadInputError(f"{path}: 'members' must be a non-empty list of checkpoint paths")
    paths = [path.parent / m for m in members]
    missing = [m for m, p in zip(members, paths, strict=True) if not _is_file(p)]
    if missing:
        raise BadInputError(
            f"{path}: member checkpoint(s) not found: {', '.join(map(repr, missing))} "
            f"(relative paths are read from {path.parent})"
        )
    return members, paths


def _is_file(path: Path) -> bool:
    """Whether `path` is a regular file; a name the system cannot take (a NUL byte, too long)
    is none."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _ensemble_threshold(path: Path, value: Any) -> float | None:
    """The stored decision threshold: absent, or a finite number in [0, 1]."""
    if value is None:
        return None
    if not is_probability(value):
        raise BadInputError(f"{path}: threshold must be a number in [0, 1], got {value!r:.40}")
    return float(value)


@dataclass
class Predictor:
    """A checkpoint or an ensemble file, loaded: members, how to fuse them, the threshold.

    `threshold` is the decision threshold chosen on validation data (`None` when the checkpoint
    stores none); `kind` is "checkpoint" or "ensemble".
    """

    path: Path
    kind: str
    members: list[Member]
    ensembler: Any | None = None
    threshold: float | None = None
    # An ensemble file's temperature (`covidzoo calibrate`), applied to the fused probability,
    # and the record of its fit; a checkpoint's are its member's (`Member.probs`, spec.extra).
    temperature: float | None = None
    calibration: dict[str, Any] | None = None

    def set_tta(self, mode: str | None) -> None:
        """Score every scan as the mean over the views of `--tta` (`transforms.tta_views`)."""
        from .values import TTA_MODES

        if mode not in (None, *TTA_MODES):
            raise BadInputError(f"--tta: '{mode}' is not one of {', '.join(TTA_MODES)}")
        for member in self.members:
            member.tta = mode

    def without_calibration(self) -> None:
        """Forget every fitted temperature (what `calibrate` fits anew from)."""
        self.temperature = None
        for member in self.members:
            member.spec = replace(member.spec, temperature=None)

    def override_preprocess(self, steps: dict[str, Any] | None) -> list[str]:
        """Feed every member scans prepared with `steps` (`PreprocessConfig` keywords, as
        `--preprocess` gives them) instead of as its checkpoint records; a note per member
        whose preprocessing this changes, saying from what (its figures are then those of
        inputs it did not learn from)."""
        from .data.preprocess import describe

        notes = []
        for member in self.members if steps else ():
            trained = member.preprocess
            try:
                now = trained.with_steps(steps)
            except BadInputError as exc:
                raise BadInputError(f"--preprocess: {exc}") from None
            if now != trained:
                member.spec = replace(member.spec, preprocess=now.to_dict())
                notes.append(f"{member.path.name}: scans preprocessed with {describe(now)}, "
                             f"not as it was trained ({describe(trained)}): --preprocess")
        return notes

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names by label (every member's: `check_members`)."""
        return self.members[0].classes

    def check_class_fusion(self) -> None:
        """Members of three or more classes are fused by the mean of their class probabilities
        (the only fusion defined for classes): `BadInputError` for an ensemble file that names
        another ensembler."""
        method = getattr(self.ensembler, "method", "mean")
        if self.ensembler is not None and method != "mean":
            raise BadInputError(f"{self.path}: the '{method}' ensembler fuses covid "
                                "probabilities; a multi-class ensemble averages class "
                                "probabilities (method mean)")

    def fuse(self, member_probs: NDArray[np.float64]) -> NDArray[np.float64]:
        """One probability per scan from `n_scans x n_members` probabilities; for three or
        more classes, one row of class probabilities per scan from `n_scans x n_members x K`
        (the members' mean: the fusion of the 3D RegNet paper, the only one for classes)."""
        probs = np.asarray(member_probs, dtype=np.float64)
        if self.ensembler is None:
            return probs[:, 0]
        if probs.ndim == 3:
            self.check_class_fusion()
            fused = probs.mean(axis=1)
        else:
            fused = np.asarray(self.ensembler.predict(probs), dtype=np.float64)
        if self.temperature is not None:
            from .stats import apply_temperature

            fused = apply_temperature(fused, self.temperature)
        return fused


def load_predictor(
    path: str | os.PathLike[str], device: torch.device | str = "cpu", precision: str = "auto",
    fold: bool = True,
) -> Predictor:
    """Load a checkpoint or an ensemble file (told apart by `is_ensemble_file`)."""
    path = Path(path)
    if not is_ensemble_file(path):
        member = load_member(path, device, precision, fold)
        return Predictor(path, "checkpoint", [member], None, member.spec.threshold)
    data = _read_json(path)  # read once: a file rewritten meanwhile is never half old, half new
    paths, ensembler, threshold = _parse_ensemble(path, data)
    members = [load_member(p, device, precision, fold) for p in paths]
    check_members(members)
    record = data.get("calibration")
    return Predictor(path, "ensemble", members, ensembler, threshold,
                     check_temperature(data.get("temperature"), f"{path}: temperature"),
                     record if isinstance(record, dict) else None)


def config_groups(members: Sequence[Member]) -> dict[str, PreprocessConfig]:
    """The distinct preprocessing configs of `members`, keyed by digest, in member order."""
    groups: dict[str, PreprocessConfig] = {}
    for member in members:
        cfg = member.preprocess
        groups.setdefault(cfg.digest(), cfg)
    return groups


# --- labelled data through the cache -----------------------------------------------------------


@dataclass
class EvalData:
    """The scans of a data source, preprocessed once per distinct member config.

    Scans are in one order for every config: `sources[i]`, `labels[i]` (-1 unlabelled) and
    `splits[i]` describe row `i` of every member's probabilities. A scan that failed for any
    config is left out and listed in `failed` as `(source, reason)`.
    """

    source: str
    sources: list[str]
    labels: NDArray[np.int64]  # indices of the members' classes
    splits: list[str]
    datasets: dict[str, Any]  # config digest -> CachedScans
    rows: dict[str, list[int]]  # config digest -> the dataset index of each scan
    failed: list[tuple[str, str]] = field(default_factory=list)
    classes: tuple[str, ...] = BINARY_CLASSES
    run_split_used: bool = False  # the splits are the training run's (`load_eval_data`)

    def indices(self, split: str | None, labelled: bool = True) -> NDArray[np.int64]:
        """Rows of `split` (`None` or "all": every split), only labelled ones by default."""
        keep = [
            i for i, s in enumerate(self.splits)
            if split in (None, "all", s) and (not labelled or self.labels[i] >= 0)
        ]
        return np.asarray(keep, dtype=np.int64)


def load_eval_data(
    members: Sequence[Member], root: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None, splits: Sequence[str] | None = None,
    workers: int = 0, progress: bool = True, cache: str | os.PathLike[str] | None = None,
    run_split: Sequence[Any] | None = None,
) -> EvalData:
    """The scans of `splits` (`None`: all) of a data source, prepared for every member.

    `run_split` (the `split.csv` of the run that trained the model) decides which of the
    source's scans are train and val, when every scan it lists is one of the source's: the
    split the run actually used (a `--val-split` draw, a fold), not the data's own folders.

    Each distinct preprocessing gets its own cache folder, keyed by source, splits and config
    (`cache_dir_for`): a cache mirrors the records it was prepared from, so keying by the splits
    too keeps `evaluate --split val` from pruning the volumes of another split's cache.

    `cache` is a cache made by `covidzoo data prepare` (instead of `root` or `manifest`): its
    scans are used as they are, which needs every member's recorded preprocessing to be the
    cache's; else `BadInputError` names the difference.
    """
    from .data import CachedScans, cache_dir_for, prepare_cache

    found = data_source(root, manifest, cache)
    source = found.name
    wanted = None if splits is None or "all" in splits else set(splits)
    failed: dict[str, str] = {}
    datasets: dict[str, Any] = {}
    used_run_split = False
    if found.cache is not None:
        prepared = CachedScans(found.cache)
        data_classes = prepared.classes
        _check_cache_config(found.cache, prepared.config, members)
        if not any(wanted is None or e["split"] in wanted for e in prepared.entries):
            raise BadInputError(f"no scans in split(s) {', '.join(sorted(wanted or []))} of "
                                f"{source}")
        datasets = dict.fromkeys(config_groups(members), prepared)
    else:
        listed, data_classes = found.labelled()
        if run_split is not None:
            listed, used_run_split = _run_split(listed, run_split)
        records = [r for r in listed if wanted is None or r.split in wanted]
        if not records:
            raise BadInputError(f"no scans in split(s) {', '.join(sorted(wanted or []))} of "
                                f"{source}")
        key = f"{source}#splits={','.join(sorted(wanted)) if wanted else 'all'}"
        if used_run_split:  # another membership of the splits: a cache of its own
            import hashlib

            members_of = "\n".join(sorted(f"{r.path}\t{r.split}" for r in records))
            key += f"#run-split={hashlib.sha256(members_of.encode()).hexdigest()[:12]}"
        for digest, cfg in config_groups(members).items():
            result = prepare_cache(records, cache_dir_for(key, cfg), cfg, workers=workers,
                                   progress=progress, classes=data_classes)
            for scan, reason in result.failed:
                failed.setdefault(scan, reason)
            datasets[digest] = CachedScans(result.cache_dir)
    first = next(iter(datasets.values()))
    positions = {d: {s: i for i, s in enumerate(ds.sources)} for d, ds in datasets.items()}
    common = [s for s in first.sources if all(s in p for p in positions.values())]
    kept = set(common)
    for ds in datasets.values():
        for scan in ds.sources:
            if scan not in kept:
                failed.setdefault(scan, f"{scan}: failed under another member's preprocessing")
    by_source = {e["source"]: e for e in first.entries}
    common = [s for s in common if wanted is None or by_source[s]["split"] in wanted]
    if not common:
        first_failure = next(iter(failed.values()), "no scans")
        raise BadInputError(f"no scan of {source} could be read ({len(failed)} failed; first: "
                            f"{first_failure})")
    to_model = _class_map(data_classes, members[0].classes, source)
    return EvalData(
        source=source,
        sources=common,
        labels=np.asarray([-1 if by_source[s]["label"] is None
                           else to_model[int(by_source[s]["label"])] for s in common],
                          dtype=np.int64),
        classes=members[0].classes,
        run_split_used=used_run_split,
        splits=[by_source[s]["split"] for s in common],
        datasets=datasets,
        rows={d: [positions[d][s] for s in common] for d in datasets},
        failed=sorted(failed.items()),
    )


def _run_split(listed: list[Any], run_split: Sequence[Any]) -> tuple[list[Any], bool]:
    """The source's scans with the run's splits (labels stay the source's) and True, when the
    run's split names only scans of this source; else the source's own and False."""
    own = {str(Path(r.path).resolve()): r for r in listed}
    ran = {str(Path(r.path).resolve()): r.split for r in run_split}
    if not ran or not set(ran) <= set(own):
        return listed, False
    return [replace(r, split=ran.get(key, r.split)) for key, r in own.items()], True


def _class_map(data: Sequence[str], model: Sequence[str], source: str) -> list[int]:
    """The model's label of each of the data's labels, by class name: a class the model does
    not know is bad input (its scores could not be graded)."""
    unknown = [name for name in data if name not in model]
    if unknown:
        raise BadInputError(f"{source} holds class(es) {', '.join(unknown)}; the model knows "
                            f"{', '.join(model)}")
    return [list(model).index(name) for name in data]


def _check_cache_config(cache: Path, config: PreprocessConfig, members: Sequence[Member]) -> None:
    """A prepared cache serves only members recorded with its very preprocessing."""
    have = config.to_dict()
    for member in members:
        need = member.preprocess.to_dict()
        differ = [k for k in have if have[k] != need[k]]
        if differ:
            raise BadInputError(
                f"--cache {cache}: its scans were prepared with "
                f"{', '.join(f'{k} {_shown(have[k])}' for k in differ)}, {member.path.name} "
                f"with {', '.join(f'{k} {_shown(need[k])}' for k in differ)}; prepare a cache "
                "with the model's preprocessing, or give --data or --manifest"
            )


def _shown(value: Any) -> str:
    """A preprocessing value as the command line writes it: 16,32,32 or -600,1500."""
    if isinstance(value, list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def _loader(dataset: Any, rows: Sequence[int], batch_size: int, workers: int,
            device: torch.device) -> Any:
    from torch.utils.data import DataLoader, Subset

    return DataLoader(Subset(dataset, list(rows)), batch_size=batch_size, shuffle=False,
                      num_workers=workers, pin_memory=device.type == "cuda")


def member_probs(
    members: Sequence[Member], data: EvalData, indices: Sequence[int], batch_size: int = 8,
    workers: int = 0, progress: bool = False,
) -> tuple[NDArray[np.float64], float]:
    """`(n_scans x n_members probabilities of rows `indices`, seconds of inference)`.

    The seconds cover reading cached volumes and the forward passes (device synchronised), not
    loading models or preparing the cache: the inference throughput. `progress` shows a bar of
    the scans scored (once per member).
    """
    if batch_size < 1:
        raise BadInputError(f"--batch-size must be at least 1, got {batch_size}")
    classes = () if not members or members[0].binary else (len(members[0].classes),)
    out = np.empty((len(indices), len(members), *classes), dtype=np.float64)
    seconds = 0.0
    with progress_bar(len(indices) * len(members), "scoring", enabled=progress,
                      rate_unit="scans") as advance:
        for k, member in enumerate(members):
            digest = member.preprocess.digest()
            rows = [data.rows[digest][i] for i in indices]
            start = time.perf_counter()
            chunks = []
            for batch, _ in _loader(data.datasets[digest], rows, batch_size, workers,
                                    member.device):
                chunks.append(member.probs(batch).cpu())  # the copy waits for the batch
                advance(len(batch))
            _sync(member.device)
            seconds += time.perf_counter() - start
            if chunks:
                out[:, k] = torch.cat(chunks).double().numpy()
    return out, seconds


# --- raw scans ---------------------------------------------------------------------------------


@dataclass
class ScanPredictions:
    """Member probabilities of the scans that could be read, and the scans that could not."""

    paths: list[str]
    probs: NDArray[np.float64]  # n_scans x n_members (x K classes beyond two)
    failed: list[tuple[str, str]]


def read_scan_batches(
    paths: Sequence[str], configs: dict[str, PreprocessConfig], batch_size: int,
    failed: list[tuple[str, str]],
) -> Iterator[tuple[list[str], dict[str, torch.Tensor]]]:
    """Batches of raw scans, each read once and preprocessed once per config. A scan that
    fails (under any config) is appended to `failed` and left out."""
    for start in range(0, len(paths), batch_size):
        names: list[str] = []
        arrays: dict[str, list[np.ndarray]] = {d: [] for d in configs}
        for path in paths[start:start + batch_size]:
            try:
                volumes = {d: load_scan(path, cfg) for d, cfg in configs.items()}
            except Exception as exc:  # one bad scan must not stop the others
                failed.append((str(path), one_line(exc)))
                continue
            names.append(str(path))
            for d, volume in volumes.items():
                arrays[d].append(volume)
        if names:
            yield names, {d: torch.from_numpy(np.stack(a))[:, None] for d, a in arrays.items()}


def predict_paths(
    predictor: Predictor, paths: Sequence[str | os.PathLike[str]], batch_size: int = 4,
    progress: bool = False,
) -> ScanPredictions:
    """Member probabilities of raw scans (DICOM folders, JPG-slice folders, `.npy`/`.npz`),
    each preprocessed with the config recorded in the member's checkpoint; `progress` shows a
    bar of the scans read and scored."""
    if batch_size < 1:
        raise BadInputError(f"--batch-size must be at least 1, got {batch_size}")
    configs = config_groups(predictor.members)
    failed: list[tuple[str, str]] = []
    names: list[str] = []
    rows: list[NDArray[np.float64]] = []
    failures_shown = 0
    with progress_bar(len(paths), "predicting", enabled=progress, rate_unit="scans") as advance:
        for batch_names, batches in read_scan_batches([str(p) for p in paths], configs, batch_size,
                                                  failed):
            columns = [member.probs(batches[member.preprocess.digest()]).double().cpu().numpy()
                       for member in predictor.members]
            advance(len(batch_names) + len(failed) - failures_shown)  # failed scans too
            failures_shown = len(failed)
            names += batch_names
            rows.append(np.stack(columns, axis=1))
    shape = () if predictor.members[0].binary else (len(predictor.classes),)
    probs = np.concatenate(rows) if rows else np.empty((0, len(predictor.members), *shape))
    return ScanPredictions(names, probs, failed)


__all__ = [
    "CLASS_DEFINITIONS",
    "ENSEMBLE_FORMAT",
    "EvalData",
    "Member",
    "Predictor",
    "ScanPredictions",
    "check_members",
    "is_ensemble_file",
    "load_eval_data",
    "load_member",
    "load_predictor",
    "logits_to_probs",
    "member_probs",
    "predict_paths",
    "read_ensemble_file",
    "write_ensemble_file",
]
