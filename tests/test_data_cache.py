"""The preprocessing cache: build, reuse, rebuild on change, failures, atomic writes, Dataset."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from covidzoo.data import CachedScans, PreprocessConfig, ScanRecord, prepare_cache
from covidzoo.data import cache as cache_module
from covidzoo.errors import BadInputError

CFG = PreprocessConfig(size=(4, 8, 8))


def _records(tmp_path, n=3):
    records = []
    for i in range(n):
        path = tmp_path / "src" / f"s{i}.npy"
        path.parent.mkdir(exist_ok=True)
        np.save(path, np.full((6, 10, 10), -600 + 100 * i, dtype=np.int16))
        records.append(ScanRecord(path, i % 2, "val" if i == 0 else "train"))
    return records


def test_build_reuse_and_dataset(tmp_path):
    records = _records(tmp_path)
    result = prepare_cache(records, tmp_path / "c", CFG, progress=False)
    assert len(result.done) == 3 and not result.skipped and not result.failed
    again = prepare_cache(records, tmp_path / "c", CFG, progress=False)
    assert len(again.skipped) == 3 and not again.done
    train = CachedScans(tmp_path / "c", split="train")
    assert len(train) == 2 and train.labels == [1, 0] and train.config == CFG
    x, y = train[0]
    assert x.dtype == torch.uint8 and x.shape == (1, 4, 8, 8) and y == 1
    assert int(x[0, 0, 0, 0]) == 145  # -500 HU through the lung window
    assert len(CachedScans(tmp_path / "c")) == 3


def test_rebuild_on_config_or_source_change(tmp_path):
    records = _records(tmp_path)
    prepare_cache(records, tmp_path / "c", CFG, progress=False)
    bigger = PreprocessConfig(size=(4, 6, 6))
    assert len(prepare_cache(records, tmp_path / "c", bigger, progress=False).done) == 3
    assert CachedScans(tmp_path / "c")[0][0].shape == (1, 4, 6, 6)
    np.save(records[1].path, np.full((6, 10, 12), -1000, dtype=np.int16))
    os.utime(records[1].path, ns=(1, 1))
    result = prepare_cache(records, tmp_path / "c", bigger, progress=False)
    assert result.done == [str(records[1].path.resolve())] and len(result.skipped) == 2


def test_failures_listed_skipped_or_strict(tmp_path):
    records = _records(tmp_path)
    np.save(records[2].path, np.zeros((3, 3)))
    records.append(ScanRecord(tmp_path / "gone", 0, "train"))
    result = prepare_cache(records, tmp_path / "c", CFG, progress=False)
    reasons = dict(result.failed)
    assert len(result.done) == 2 and len(reasons) == 2
    assert "s2.npy: expected a D x H x W array" in reasons[str(records[2].path.resolve())]
    with pytest.raises(BadInputError, match="s2.npy"):
        prepare_cache(records[:3], tmp_path / "strict", CFG, progress=False, strict=True)


def test_dropped_scans_are_pruned(tmp_path):
    records = _records(tmp_path)
    prepare_cache(records, tmp_path / "c", CFG, progress=False)
    prepare_cache(records[:1], tmp_path / "c", CFG, progress=False)
    assert len(list((tmp_path / "c" / "volumes").iterdir())) == 1
    assert len(json.loads((tmp_path / "c" / "index.json").read_text())["entries"]) == 1


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    records = _records(tmp_path, n=1)

    def half_write(f, array, allow_pickle):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.np, "save", half_write)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(records, tmp_path / "c", CFG, progress=False)
    assert list((tmp_path / "c" / "volumes").iterdir()) == []
    assert not (tmp_path / "c" / "index.json").exists()


def test_two_workers(tmp_path):
    records = _records(tmp_path, n=2)
    result = prepare_cache(records, tmp_path / "c", CFG, workers=2, progress=False)
    assert len(result.done) == 2 and result.workers == 2


def test_not_a_cache(tmp_path):
    with pytest.raises(BadInputError, match="not a covidzoo cache"):
        CachedScans(tmp_path)


def test_implicit_caches_wait_for_the_lock_and_explicit_ones_refuse(tmp_path):
    import threading

    from covidzoo.fileio import exclusive_lock

    records = _records(tmp_path, n=2)
    done: list = []
    with exclusive_lock(tmp_path / "c", "data prepare"):
        with pytest.raises(BadInputError, match="already writing"):
            prepare_cache(records, tmp_path / "c", CFG, workers=0, progress=False,
                          wait_if_busy=False)
        waiter = threading.Thread(target=lambda: done.append(
            prepare_cache(records, tmp_path / "c", CFG, workers=0, progress=False)))
        waiter.start()
        waiter.join(0.6)
        assert waiter.is_alive() and not done  # waiting, not refused, not writing
    waiter.join(30)
    assert len(done[0].done) == 2
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert ".covidzoo.lock" not in json.dumps(index)  # the lock file is not cache content


def test_index_records_checksums_and_owned_files(tmp_path):
    import hashlib

    records = _records(tmp_path, n=2)
    prepare_cache(records, tmp_path / "c", CFG, workers=0, progress=False)
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert index["format"] == 2 and index["owned"] == sorted(e["file"] for e in index["entries"])
    for entry in index["entries"]:
        data = (tmp_path / "c" / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data) and entry["dtype"] == "|u1"
        assert entry["shape"] == list(CFG.size)


def test_training_data_every_scan_failed_is_bad_input(tmp_path, monkeypatch):
    from covidzoo.data import data_source, training_data

    monkeypatch.setenv("COVIDZOO_CACHE", str(tmp_path / "zoo"))
    for split in ("train", "val"):
        for label in ("covid", "non-covid"):
            folder = tmp_path / "d" / split / label
            folder.mkdir(parents=True)
            np.save(folder / "x.npy", np.full((4, 8, 8), np.nan, np.float32))
    with pytest.raises(BadInputError, match="every scan of .* failed to read .*NaN"):
        training_data(data_source(tmp_path / "d"), CFG.size, quiet=True)
