"""Patient-grouped study designs: the manifest's patient column, the grouped val split, K-fold
splits and the split file."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from covidzoo.data.layouts import (
    Fold,
    ScanRecord,
    find_scans,
    kfold_splits,
    read_manifest,
    read_split_csv,
    stratified_split,
    write_split_csv,
)
from covidzoo.errors import BadInputError

SEEDS = range(200)


def _patients(rng: random.Random, mixed: bool) -> list[tuple[str, list[int | None]]]:
    """Patients with 1-4 scans each; `mixed`: a label per scan, else one per patient."""
    out = []
    for p in range(rng.randint(5, 25)):
        label = rng.randint(0, 1)
        labels = [rng.randint(0, 1) if mixed else label for _ in range(rng.randint(1, 4))]
        out.append((f"P{p:02d}", labels))
    return out


def _manifest(tmp_path: Path, rng: random.Random, mixed: bool, column: str = "patient",
              splits: tuple[str, ...] = ("train",)) -> Path:
    """A manifest whose rows (shuffled) repeat patients; each patient gets one split."""
    rows = []
    for patient, labels in _patients(rng, mixed):
        split = rng.choice(splits)
        rows += [f"{patient}_{i}.npy,{label},{split},{patient}" for i, label in enumerate(labels)]
    rng.shuffle(rows)
    path = tmp_path / "m.csv"
    path.write_text(f"path,label,split,{column}\n" + "\n".join(rows) + "\n")
    return path


def _sides(records) -> dict[str | None, set[str]]:
    sides: dict[str | None, set[str]] = defaultdict(set)
    for r in records:
        sides[r.group].add(r.split)
    return sides


def _old_stratified_split(records, val_split, seed=0):
    """covidzoo's ungrouped split as it was before groups (the reference for group-less data)."""
    rng = random.Random(seed)
    out = [r for r in records if r.split != "train"]
    for label in sorted({r.label for r in records if r.split == "train"}, key=str):
        group = [r for r in records if r.split == "train" and r.label == label]
        rng.shuffle(group)
        k = round(len(group) * val_split) if len(group) > 1 else 0
        out += [ScanRecord(r.path, r.label, "val") for r in group[:k]]
        out += group[k:]
    return sorted(out, key=lambda r: (r.split, str(r.path)))


def test_stratified_split_keeps_patients_together(tmp_path):
    for seed in SEEDS:
        rng = random.Random(seed)
        mixed = seed % 2 == 1
        manifest = _manifest(tmp_path, rng, mixed)
        val_split = rng.choice([0.2, 0.25, 0.34, 0.5])
        records = find_scans(manifest=manifest, val_split=val_split, seed=seed)
        assert len(records) == len(read_manifest(manifest))
        assert all(len(s) == 1 for s in _sides(records).values()), seed
        if mixed:
            continue
        # One label per patient: each class's val scans are within half the largest group
        # (2 scans) of the target, when the class has more than one patient.
        for label in (0, 1):
            scans = [r for r in records if r.label == label]
            if len({r.group for r in scans}) > 1:
                n_val = sum(r.split == "val" for r in scans)
                assert abs(n_val - round(len(scans) * val_split)) <= 2, (seed, label)


def test_ungrouped_split_is_unchanged():
    """Records without groups split exactly as before groups existed, input order included."""
    for seed in SEEDS:
        rng = random.Random(seed)
        records = [ScanRecord(Path(f"/d/s{rng.randint(0, 99)}"), rng.choice([0, 1, 1, None]),
                              rng.choice(["train", "train", "train", "test"]))
                   for _ in range(rng.randint(1, 30))]
        val_split = rng.choice([0.1, 0.25, 0.5, 0.9])
        assert stratified_split(records, val_split, seed) == \
            _old_stratified_split(records, val_split, seed), seed


def test_grouped_split_does_not_depend_on_input_order(tmp_path):
    changed = 0
    for seed in range(40):
        records = read_manifest(_manifest(tmp_path, random.Random(seed), mixed=True))
        split = stratified_split(records, 0.3, seed)
        shuffled = records[:]
        random.Random(-seed).shuffle(shuffled)
        assert stratified_split(shuffled, 0.3, seed) == split, seed
        changed += stratified_split(records, 0.3, seed + 1) != split
    assert changed > 20  # the seed does choose the split


def test_kfold_keeps_patients_together_and_covers_every_scan(tmp_path):
    for seed in SEEDS:
        rng = random.Random(seed)
        records = read_manifest(_manifest(tmp_path, rng, mixed=seed % 2 == 1,
                                          splits=("train", "train", "val", "test")))
        pool = [r for r in records if r.split != "test"]
        test = sorted((r for r in records if r.split == "test"), key=lambda r: str(r.path))
        k, repeats = rng.randint(2, 5), rng.randint(1, 2)
        try:
            folds = kfold_splits(records, k, repeats, seed)
        except BadInputError as exc:  # too few patients of a class: the refusal says so
            assert "fewer than the" in str(exc) or "folds need at least" in str(exc)
            continue
        assert [(f.repeat, f.index) for f in folds] == \
            [(r, i) for r in range(repeats) for i in range(k)]
        largest = max(Counter(r.group for r in pool).values())
        totals = Counter(r.label for r in pool)
        for repeat in range(repeats):
            val_count: Counter[Path] = Counter()
            for fold in folds[repeat * k:(repeat + 1) * k]:
                assert len(fold.records) == len(records)
                assert all(len(s) == 1 for s in _sides(fold.records).values()), seed
                assert sorted((r for r in fold.records if r.split == "test"),
                              key=lambda r: str(r.path)) == test
                val = [r for r in fold.records if r.split == "val"]
                val_count.update(r.path for r in val)
                labels = Counter(r.label for r in val)
                for label, total in totals.items():
                    assert abs(labels[label] - total / k) <= largest, (seed, label)
            assert val_count == Counter(r.path for r in pool), seed


def test_kfold_is_deterministic(tmp_path):
    records = read_manifest(_manifest(tmp_path, random.Random(7), mixed=True))
    folds = kfold_splits(records, 3, repeats=2, seed=5)
    shuffled = records[::-1]
    random.Random(1).shuffle(shuffled)
    assert kfold_splits(shuffled, 3, repeats=2, seed=5) == folds
    assert kfold_splits(records, 3, repeats=2, seed=6) != folds
    # Repeats reshuffle with seed + repeat.
    assert folds[3:] != folds[:3]
    again = kfold_splits(records, 3, seed=6)
    assert [f.records for f in again] == [f.records for f in folds[3:]]
    assert all(isinstance(f, Fold) for f in folds)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize("rows, message", [
    ("a,1,train,P\nb,1,val,P\n", "patient P has scans in train and val"),
    ("a,1,test,P\nb,1,train,P\nc,0,val,Q\n", "patient P has scans in train and test"),
])
def test_manifest_patient_in_two_splits(tmp_path, rows, message):
    path = _write(tmp_path, "path,label,split,patient\n" + rows)
    with pytest.raises(BadInputError, match=f"m.csv: {message}$"):
        find_scans(manifest=path)


@pytest.mark.parametrize("column", ["patient", "group", " Patient "])
def test_manifest_group_column(tmp_path, column):
    path = _write(tmp_path, f"path,label,{column}\na,1,P1\nb,0, P1 \nc,1,\nd,0,P2\n")
    assert [(r.path.name, r.group) for r in find_scans(manifest=path)] == \
        [("a", "P1"), ("b", "P1"), ("c", None), ("d", "P2")]
    name = column.strip().lower()
    path = _write(tmp_path, f"path,label,split,{column}\na,1,train,P1\nb,0,val,P1\n")
    with pytest.raises(BadInputError, match=f"m.csv: {name} P1 has scans in train and val"):
        find_scans(manifest=path)


def test_manifest_with_both_columns(tmp_path):
    path = _write(tmp_path, "path,label,patient,group\na,1,P,G\n")
    with pytest.raises(BadInputError, match="m.csv: both a patient and a group column"):
        find_scans(manifest=path)


def test_empty_cell_is_its_own_group(tmp_path):
    """Scans with empty cells are split one by one, as without the column."""
    rows = "".join(f"s{i},{i % 2},\n" for i in range(12))
    grouped = find_scans(manifest=_write(tmp_path, "path,label,patient\n" + rows),
                         val_split=0.5, seed=3)
    plain = find_scans(manifest=_write(tmp_path, "path,label\n" + rows.replace(",\n", "\n")),
                       val_split=0.5, seed=3)
    assert grouped == plain
    assert all(r.group is None for r in grouped)
    assert sum(r.split == "val" for r in grouped) == 6


def test_folder_layout_has_no_groups(tmp_path):
    for name in ("covid/a", "covid/b", "non-covid/c"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "0.jpg").write_bytes(b"")
    records = find_scans(tmp_path)
    assert [r.group for r in records] == [None, None, None]


def test_positional_record_still_works():
    record = ScanRecord(Path("/d/a"), 1, "train")
    assert record.group is None
    assert record == ScanRecord(Path("/d/a"), 1, "train", None)


def test_split_record_in_two_splits():
    records = [ScanRecord(Path("/d/a"), 1, "train", "P"), ScanRecord(Path("/d/b"), 1, "test", "P"),
               ScanRecord(Path("/d/c"), 0, "train", "Q"), ScanRecord(Path("/d/e"), 0, "train")]
    with pytest.raises(BadInputError, match="^group P has scans in train and test$"):
        stratified_split(records, 0.5)
    with pytest.raises(BadInputError, match="^group P has scans in train/val and test$"):
        kfold_splits(records, 2)


def _records(n_patients: int, label_of=lambda p: p % 2) -> list[ScanRecord]:
    return [ScanRecord(Path(f"/d/p{p}_{i}"), label_of(p), "train", f"P{p}")
            for p in range(n_patients) for i in range(2)]


@pytest.mark.parametrize("records, folds, repeats, message", [
    (_records(6), 1, 1, "^K-fold needs at least 2 folds, got 1$"),
    (_records(6), 2, 0, "^K-fold needs at least 1 repeat, got 0$"),
    (_records(6), 7, 1, "^7 folds need at least 7 patients; the train and val scans have 6$"),
    (_records(8, lambda p: int(p < 2)), 3, 1,
     "^class 1 has 2 patient\\(s\\), fewer than the 3 folds; use at most 2 folds$"),
    (_records(8, lambda p: None if p < 2 else 0), 3, 1, "^unlabelled has 2 patient"),
    ([ScanRecord(Path("/d/a"), 1, "test")], 2, 1, "need at least 2 patients.* have 0$"),
])
def test_kfold_refuses(records, folds, repeats, message):
    with pytest.raises(BadInputError, match=message):
        kfold_splits(records, folds, repeats)


def test_kfold_takes_as_many_folds_as_the_rarest_class_has_patients():
    folds = kfold_splits(_records(8, lambda p: int(p < 3)), 3)
    for fold in folds:
        assert Counter(r.label for r in fold.records if r.split == "val")[1] == 2


def test_split_csv_round_trip(tmp_path):
    records = [ScanRecord(tmp_path / "a,b \"q\".npy", 1, "train", "P, 1"),
               ScanRecord(tmp_path / "c", None, "test"),
               ScanRecord(tmp_path / "dé", 0, "val", "Q"),
               ScanRecord(tmp_path / "e", 2, "train", " spaced ")]
    path = tmp_path / "run" / "split.csv"
    assert write_split_csv(records, path) == path
    assert read_split_csv(path) == records
    assert path.read_text(encoding="utf-8").splitlines()[:3] == [
        "path,label,split,group", f"\"{tmp_path}/a,b \"\"q\"\".npy\",1,train,\"P, 1\"",
        f"{tmp_path}/c,,test,"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["split.csv"]  # no temp file left


def test_split_csv_writes_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_split_csv([ScanRecord(Path("x/a"), 1, "train")], "split.csv")
    assert read_split_csv(tmp_path / "split.csv") == [ScanRecord(Path.cwd() / "x/a", 1, "train")]


@pytest.mark.parametrize("content, message", [
    (b"path,label,split\n/a,1,train\n", "not a split file; expected the header"),
    (b"", "not a split file"),
    (b"path,label,split,group\n/a,1,train\n", "split.csv:2: 3 fields, expected 4"),
    (b"path,label,split,group\n/a,1,train,,x\n", "split.csv:2: 5 fields, expected 4"),
    (b"path,label,split,group\n/a,covid,train,\n", "split.csv:2: label 'covid' is not an"),
    (b"path,label,split,group\n/a,1,train,\n/b,1,valid,\n", "split.csv:3: unknown split 'valid'"),
    (b"path,label,split,group\na,1,train,\n", "split.csv:2: path 'a' is not absolute"),
    (b"path,label,split,group\n/\xff,1,train,\n", "split.csv: not UTF-8 text"),
])
def test_malformed_split_csv(tmp_path, content, message):
    path = tmp_path / "split.csv"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match=message) as info:
        read_split_csv(path)
    assert "\n" not in str(info.value)


def test_missing_split_csv(tmp_path):
    with pytest.raises(BadInputError, match="gone.csv: cannot read split file"):
        read_split_csv(tmp_path / "gone.csv")
