"""Dataset layouts: class folders (the COV19-CT-DB layout) or a CSV manifest -> `ScanRecord`s;
the study designs over them (a patient-grouped val split, K-fold splits) and the split file."""

from __future__ import annotations

import csv
import os
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from ..fileio import atomic_write
from ..values import BINARY_CLASSES
from .listing import list_folder

SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
CLASSES = {"covid": 1, "non-covid": 0, "non_covid": 0, "noncovid": 0}
GROUP_COLUMNS = ("patient", "group")
LABELS = {
    "1": 1, "covid": 1, "positive": 1, "true": 1,
    "0": 0, "non-covid": 0, "non_covid": 0, "noncovid": 0, "negative": 0, "false": 0,
}


@dataclass(frozen=True)
class ScanRecord:
    """One scan of a dataset: where it is, its label (the index of its class: for two classes
    1 = covid, 0 = non-covid; None = unknown),
    its split ("train", "val" or "test") and its group: the patient it belongs to (the scans of
    one group always land on the same side of a split); None, the scan is its own group."""

    path: Path
    label: int | None
    split: str
    group: str | None = None


def _children(folder: Path) -> dict[str, Path]:
    """Sub-folders by lower-cased name (layouts match names case-insensitively)."""
    return {p.name.lower(): p for p in list_folder(folder) if p.is_dir()}


def _scans(folder: Path) -> list[Path]:
    """The scans of a class folder: each sub-folder, and each file a reader claims as a scan
    (`.npy`/`.npz`, `.nii`/`.nii.gz`, a plugin's format), in the folder's order."""
    from .readers import scan_files

    listed = list_folder(folder)
    files = set(scan_files([p for p in listed if p.is_file()]))
    return [p for p in listed if p.is_dir() or p in files]


def _class_scans(folder: Path) -> dict[str, list[Path]]:
    """The scans of each class folder under `folder`, by lower-cased name; a folder holding no
    scan is no class."""
    found = {name: _scans(sub) for name, sub in _children(folder).items()
             if name not in SPLITS}
    return {name: scans for name, scans in found.items() if scans}


def classes_of(names: Iterable[str]) -> tuple[str, ...]:
    """The classes that class folders (or manifest labels) named `names` make: the binary
    pair when every name is a covid / non-covid spelling (labels 0 and 1 as always), else every
    name, sorted (labels their indices)."""
    names = set(names)
    if names <= set(CLASSES):
        return BINARY_CLASSES
    if len(names) < 3:  # which of two other names is "positive" would be a guess
        raise BadInputError(
            f"classes {', '.join(sorted(names))}: two classes are covid and non-covid; other "
            "class names need three or more classes")
    return tuple(sorted(names))


def _label_of(name: str, classes: tuple[str, ...]) -> int:
    return CLASSES[name] if classes == BINARY_CLASSES else classes.index(name)


def _from_folders(root: Path) -> tuple[list[ScanRecord], tuple[str, ...]]:
    if not root.is_dir():
        raise BadInputError(f"{root}: no such folder")
    children = _children(root)
    splits = {SPLITS[n]: p for n, p in children.items() if n in SPLITS}
    found = ({split: _class_scans(folder) for split, folder in splits.items()} if splits
             else {"train": _class_scans(root)})
    labelled = [n for split, by_class in found.items() if split != "test" for n in by_class]
    try:
        classes = classes_of(labelled)
    except BadInputError as exc:
        raise BadInputError(f"{root}: {exc}") from None
    records: list[ScanRecord] = []
    for split, by_class in sorted(found.items()):
        if split == "test" and not set(by_class) & set(labelled or CLASSES):
            records += [ScanRecord(p, None, "test") for p in _scans(splits["test"])]
            continue
        for name, scans in by_class.items():
            if name not in classes and not (classes == BINARY_CLASSES and name in CLASSES):
                raise BadInputError(f"{root}/{split}/{name}: a class the train and val "
                                    f"folders do not have ({', '.join(classes)})")
            records += [ScanRecord(p, _label_of(name, classes), split) for p in scans]
    if not records:
        raise BadInputError(
            f"{root}: no scans found; expected {{train,val}}/{{covid,non-covid}}/SCAN, "
            "{covid,non-covid}/SCAN or test/SCAN (or other class names: one folder per class)"
        )
    return records, classes


class _UnknownLabel(BadInputError):
    """A label `_manifest_classes` refuses; `label` is its text, to find its line."""

    def __init__(self, label: str, message: str) -> None:
        super().__init__(message)
        self.label = label


def _manifest_classes(values: Iterable[str]) -> tuple[str, ...]:
    """The classes of a manifest's label column: binary when every label is a binary spelling
    (`LABELS`: 1/0, covid/non-covid, positive/negative, true/false); integers 0..K-1 (each
    present) name K classes "0".."K-1"; otherwise three or more distinct names, each a class,
    sorted."""
    texts = {v.strip().lower() for v in values} - {""}
    if texts <= set(LABELS):
        return BINARY_CLASSES
    numbers = {int(t) for t in texts if t.isdigit()}
    if len(numbers) == len(texts):  # class indices: every one of 0..K-1 must be there
        missing = sorted(set(range(max(numbers) + 1)) - numbers)
        if missing:
            raise _UnknownLabel(str(max(numbers)),
                                f"unknown label '{max(numbers)}': integer labels are the "
                                f"classes 0..K-1, and {missing[0]} has no scan")
        return tuple(str(i) for i in range(max(numbers) + 1))
    if len(texts) < 3:  # a typo of a binary label, most likely
        unknown = sorted(texts - set(LABELS))[0]
        raise _UnknownLabel(unknown, f"unknown label '{unknown}'; use 1/0 or covid/non-covid, "
                                     "or three or more class names")
    digits = sorted(t for t in texts if t.isdigit())
    if digits:  # numbers beside names: class indices or typos, never a class named "2"
        names = sorted(texts - set(digits))
        odd = names[0] if len(names) < len(digits) else digits[0]
        raise _UnknownLabel(odd, f"label '{odd}': the labels mix numbers ({', '.join(digits)}) "
                                 f"and class names ({', '.join(names)}); use one or the other")
    return tuple(sorted(texts))


def _label(value: str, where: str, classes: tuple[str, ...] = BINARY_CLASSES) -> int | None:
    text = value.strip().lower()
    if text == "":
        return None
    if classes == BINARY_CLASSES:
        if text not in LABELS:
            raise BadInputError(f"{where}: unknown label '{value}'; use 1/0 or covid/non-covid")
        return LABELS[text]
    if text.isdigit():  # class indices ("07" is 7)
        return int(text)
    return classes.index(text)  # `_manifest_classes` made the classes of these very labels


def _read_csv(manifest: Path) -> tuple[list[str], list[dict[str | None, Any]]]:
    """The header and rows of a UTF-8 CSV (a byte-order mark, as Excel writes, is fine)."""
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [c.strip().lower() for c in reader.fieldnames or []]
            return header, list(reader)
    except OSError as exc:
        raise BadInputError(f"{manifest}: cannot read manifest ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{manifest}: not UTF-8 text (byte {exc.start}); save the "
                            "manifest as UTF-8 CSV") from exc
    except csv.Error as exc:
        raise BadInputError(f"{manifest}: not a readable CSV ({exc})") from exc


def _from_manifest(manifest: Path, label_required: bool = True
                   ) -> tuple[list[ScanRecord], tuple[str, ...]]:
    header, rows = _read_csv(manifest)
    required = ("path", "label") if label_required else ("path",)
    missing = [c for c in required if c not in header]
    if missing:
        raise BadInputError(f"{manifest}: missing column(s) {', '.join(missing)}")
    if set(GROUP_COLUMNS) <= set(header):
        raise BadInputError(f"{manifest}: both a patient and a group column; keep one")
    group_column = next((c for c in GROUP_COLUMNS if c in header), None)
    base = manifest.parent
    label_key = next((k for k in (rows[0] if rows else {}) if k is not None
                      and k.strip().lower() == "label"), None)
    labels = [(row.get(label_key) or "") if label_key else "" for row in rows]
    try:
        classes = _manifest_classes(labels)
    except _UnknownLabel as exc:  # name the first row of the label it refused
        line = next(n for n, v in enumerate(labels, start=2) if v.strip().lower() == exc.label)
        raise BadInputError(f"{manifest}:{line}: {exc}") from None
    records = []
    for line, row in enumerate(rows, start=2):
        row = {k.strip().lower(): (v or "") for k, v in row.items() if k is not None}
        where = f"{manifest}:{line}"
        if not row["path"].strip():
            raise BadInputError(f"{where}: empty path")
        if "\0" in row["path"]:
            raise BadInputError(f"{where}: a NUL character in the path")
        split = row.get("split", "").strip().lower() or "train"
        if split not in SPLITS:
            raise BadInputError(f"{where}: unknown split '{split}'; use train, val or test")
        group = row.get(group_column or "", "").strip() or None
        records.append(
            ScanRecord(base / row["path"].strip(),
                       _label(row.get("label", ""), where, classes), SPLITS[split], group)
        )
    if not records:
        raise BadInputError(f"{manifest}: manifest lists no scans")
    leak = _group_leak((r.group, r.split) for r in records)
    if leak:
        raise BadInputError(f"{manifest}: {group_column} {leak}")
    return records, classes


def manifest_column(manifest: str | os.PathLike[str], column: str) -> dict[str, str]:
    """The value of `column` for each scan of a manifest, by the scan's resolved path (what
    `evaluate --by site` groups by); an absent column is bad input naming the columns there
    are, an empty cell is the group "(none)"."""
    manifest = Path(manifest)
    header, rows = _read_csv(manifest)
    name = column.strip().lower()
    if name not in header:
        raise BadInputError(f"--by {column}: {manifest} has no such column (its columns: "
                            f"{', '.join(header)})")
    out = {}
    for row in rows:
        row = {k.strip().lower(): (v or "") for k, v in row.items() if k is not None}
        if row.get("path", "").strip():
            path = str((manifest.parent / row["path"].strip()).resolve())
            out[path] = row.get(name, "").strip() or "(none)"
    return out


def read_manifest(
    manifest: str | os.PathLike[str], label_required: bool = True
) -> list[ScanRecord]:
    """The scans of a CSV manifest (`path,label[,split][,patient]`, paths relative to its
    folder) in the manifest's own order; `label_required=False` (predict) makes the label column
    optional. The `patient` column (or `group`: either name) groups scans; an empty cell, or no
    such column, makes a scan its own group. A group with scans in two splits is bad input."""
    return _from_manifest(Path(manifest), label_required)[0]


# The order a message names splits in.
_RANK = {s: i for i, s in enumerate(("train", "train/val", "val", "test"))}


def _group_leak(pairs: Iterable[tuple[str | None, str]]) -> str | None:
    """`G has scans in train and val` for the first group (by name) found in more than one of the
    splits of the `(group, split)` pairs; None when every group keeps to one split."""
    splits: dict[str, set[str]] = {}
    for group, split in pairs:
        if group is not None:
            splits.setdefault(group, set()).add(split)
    for group in sorted(splits):
        if len(splits[group]) > 1:
            names = sorted(splits[group], key=lambda s: (_RANK.get(s, len(_RANK)), s))
            return f"{group} has scans in {' and '.join(names)}"
    return None


def _check_groups(pairs: Iterable[tuple[str | None, str]]) -> None:
    leak = _group_leak(pairs)
    if leak:
        raise BadInputError(f"group {leak}")


def _units(records: list[ScanRecord]) -> list[list[ScanRecord]]:
    """The records by group (a record without one is its own group, keyed by its path), in an
    order that depends on the records' content only, not on their order."""
    units: dict[tuple[int, str], list[ScanRecord]] = {}
    for r in records:
        key = (0, r.group) if r.group is not None else (1, str(r.path))
        units.setdefault(key, []).append(r)
    return [units[key] for key in sorted(units)]


def _majority(unit: list[ScanRecord]) -> int | None:
    """A group's label for stratification: its most common label (a tie: the first by str)."""
    counts = Counter(r.label for r in unit)
    return min(counts, key=lambda label: (-counts[label], str(label)))


def _sorted(records: Iterable[ScanRecord]) -> list[ScanRecord]:
    return sorted(records, key=lambda r: (r.split, str(r.path)))


def stratified_split(
    records: list[ScanRecord], val_split: float, seed: int = 0
) -> list[ScanRecord]:
    """Move a seeded, per-class fraction `val_split` of the train records to "val", whole groups
    at a time: the train scans of one group (patient) all stay or all move.

    Groups are stratified by their majority label; in each class, each of the shuffled groups in
    turn goes to val when that brings the class's val scan count closer to `val_split` of its
    scans (a class of one group stays in train). Grouped records are ordered by group and path
    first, so the split depends only on `seed` and the records, not on their order. Records
    without a group are each their own group; when no train record has a group the result is
    exactly that of covidzoo's ungrouped split before groups existed (which shuffles the records
    in their given order).
    A group with records in more than one split is bad input.
    """
    if not 0.0 < val_split < 1.0:
        raise BadInputError(f"val split must be in (0, 1), got {val_split}")
    _check_groups((r.group, r.split) for r in records)
    rng = random.Random(seed)
    train = [r for r in records if r.split == "train"]
    out = [r for r in records if r.split != "train"]
    grouped = any(r.group is not None for r in train)
    units = _units(train) if grouped else [[r] for r in train]
    for label in sorted({_majority(u) for u in units}, key=str):
        stratum = [u for u in units if _majority(u) == label]
        rng.shuffle(stratum)
        target = round(sum(map(len, stratum)) * val_split) if len(stratum) > 1 else 0
        val: list[ScanRecord] = []
        kept: list[ScanRecord] = []
        for unit in stratum:
            if abs(len(val) + len(unit) - target) < abs(len(val) - target):
                val += [replace(r, split="val") for r in unit]
            else:
                kept += unit
        out += val + kept
    return _sorted(out)


@dataclass(frozen=True)
class Fold:
    """One fold of a K-fold study: `records` are all the scans (sorted by split and path), this
    fold's part of the pooled train and val scans as "val", the other parts as "train", and the
    test scans as they were. `repeat` and `index` count from 0."""

    repeat: int
    index: int
    records: tuple[ScanRecord, ...]


def _class_name(label: int | None) -> str:
    return "unlabelled" if label is None else f"class {label}"


def _assign(units: list[list[ScanRecord]], folds: int, rng: random.Random) -> list[int]:
    """A fold for each unit: the units, shuffled then largest first, each go to the fold that
    most lacks their classes (Σ over the unit's scans of that fold's count of the scan's class
    less its ideal share; ties: fewer scans, then a seeded order of the folds). For groups of
    one label this is greedy list scheduling per class, which keeps every fold's count of a
    class within the largest group's size of the ideal `n_class / folds`."""
    totals = Counter(r.label for unit in units for r in unit)
    counts: list[Counter[int | None]] = [Counter() for _ in range(folds)]
    sizes = [0] * folds
    tie = list(range(folds))
    rng.shuffle(tie)
    order = list(range(len(units)))
    rng.shuffle(order)
    order.sort(key=lambda i: -len(units[i]))
    parts = [0] * len(units)
    for i in order:
        unit = Counter(r.label for r in units[i])
        lacks = [(sum(n * (folds * counts[f][c] - totals[c]) for c, n in unit.items()),
                  sizes[f], tie[f]) for f in range(folds)]
        best = lacks.index(min(lacks))
        counts[best].update(unit)
        sizes[best] += len(units[i])
        parts[i] = best
    return parts


def kfold_splits(
    records: list[ScanRecord], folds: int, repeats: int = 1, seed: int = 0
) -> list[Fold]:
    """Stratified, patient-grouped K-fold splits of the train and val records (pooled), `repeats`
    times: `folds * repeats` `Fold`s, repeat by repeat. In each fold one part of the pooled
    scans is "val" and the rest "train"; within a repeat every pooled scan is "val" exactly
    once, and the scans of a group (patient) are always on the same side. Test records stay
    "test" in every fold. Repeat `r` shuffles with `seed + r`; the result depends only on
    `seed` and the records, not on their order. Like scikit-learn's `StratifiedGroupKFold`,
    with a bound: for groups of one label, each fold's count of a class is within the largest
    group's size of the ideal (see `_assign`).

    Bad input: `folds < 2`, `repeats < 1`, more folds than groups, a class with fewer groups
    than folds, a group with records in both the pool and test.
    """
    if folds < 2:
        raise BadInputError(f"K-fold needs at least 2 folds, got {folds}")
    if repeats < 1:
        raise BadInputError(f"K-fold needs at least 1 repeat, got {repeats}")
    pool = [r for r in records if r.split in ("train", "val")]
    test = [r for r in records if r.split not in ("train", "val")]
    _check_groups((r.group, "train/val" if r.split in ("train", "val") else r.split)
                  for r in records)
    units = _units(pool)
    if folds > len(units):
        raise BadInputError(f"{folds} folds need at least {folds} patients; the train and val "
                            f"scans have {len(units)}")
    for label in sorted({r.label for r in pool}, key=str):
        n = sum(any(r.label == label for r in unit) for unit in units)
        if n < folds:
            raise BadInputError(f"{_class_name(label)} has {n} patient(s), fewer than the "
                                f"{folds} folds; use at most {n} folds")
    out = []
    for repeat in range(repeats):
        parts = _assign(units, folds, random.Random(seed + repeat))
        for index in range(folds):
            fold = [replace(r, split="val" if part == index else "train")
                    for unit, part in zip(units, parts, strict=True) for r in unit]
            out.append(Fold(repeat, index, tuple(_sorted(fold + test))))
    return out


SPLIT_HEADER = ["path", "label", "split", "group"]


def write_split_csv(records: Iterable[ScanRecord], path: str | os.PathLike[str]) -> Path:
    """Write the split a run used as CSV `path,label,split,group` (absolute paths; an empty
    label or group is None), atomically. `read_split_csv` gives the records back."""
    rows = [[str(Path(r.path).absolute()), "" if r.label is None else str(r.label), r.split,
             r.group or ""] for r in records]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(SPLIT_HEADER)
            writer.writerows(rows)

    return atomic_write(path, write)


def _split_row(row: list[str], where: str) -> ScanRecord:
    if len(row) != len(SPLIT_HEADER):
        raise BadInputError(f"{where}: {len(row)} fields, expected {len(SPLIT_HEADER)}")
    path, label, split, group = row
    if not Path(path).is_absolute():
        raise BadInputError(f"{where}: path '{path}' is not absolute")
    if split not in set(SPLITS.values()):
        raise BadInputError(f"{where}: unknown split '{split}'")
    try:
        value = None if label == "" else int(label)
    except ValueError:
        raise BadInputError(f"{where}: label '{label}' is not an integer") from None
    return ScanRecord(Path(path), value, split, group or None)


def read_split_csv(path: str | os.PathLike[str]) -> list[ScanRecord]:
    """The records of a split file `write_split_csv` wrote, in its order; a malformed file is
    bad input naming the file (and line)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read split file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except csv.Error as exc:
        raise BadInputError(f"{path}: not a readable CSV ({exc})") from exc
    if not lines or lines[0] != SPLIT_HEADER:
        raise BadInputError(f"{path}: not a split file; expected the header "
                            f"{','.join(SPLIT_HEADER)}")
    return [_split_row(row, f"{path}:{line}") for line, row in enumerate(lines[1:], start=2)]


def find_scans(
    root: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    val_split: float | None = None,
    seed: int = 0,
) -> list[ScanRecord]:
    """The scans of a dataset (`find_labelled` without the class names)."""
    return find_labelled(root, manifest, val_split, seed)[0]


def find_labelled(
    root: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    val_split: float | None = None,
    seed: int = 0,
) -> tuple[list[ScanRecord], tuple[str, ...]]:
    """The scans of a dataset, from class folders under `root` or from a CSV `manifest`.

    Folders: `ROOT/{train,val}/{covid,non-covid}/SCAN`, `ROOT/{covid,non-covid}/SCAN` (all
    "train"), and an unlabeled `ROOT/test/SCAN`; names match case-insensitively. A SCAN is a
    folder (DICOM series, slice images) or a file a reader claims (`.npy`/`.npz`,
    `.nii`/`.nii.gz`, a plugin reader's format). Manifest:
    columns `path,label[,split][,patient]`, paths relative to the manifest's folder (see
    `read_manifest`). `val_split` moves a stratified, seeded fraction of "train" to "val", a
    patient at a time, for data that comes without a val split (see `stratified_split`).

    Returns the records and the class names by label: `BINARY_CLASSES` for covid / non-covid
    data, else the class folders' names (or the manifest's label names, or "0".."K-1" for
    integer labels), sorted (see `classes_of`).
    """
    if (root is None) == (manifest is None):
        raise BadInputError("give either a data folder or a manifest, not both or neither")
    records, classes = (_from_manifest(Path(manifest)) if manifest is not None
                        else _from_folders(Path(root)))
    if val_split is not None:
        if any(r.split == "val" for r in records):
            raise BadInputError("the data already has a val split; drop --val-split")
        records = stratified_split(records, val_split, seed)
    return sorted(records, key=lambda r: (r.split, str(r.path))), classes
