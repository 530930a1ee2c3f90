"""Demo data (determinism, balance, formats, atomic publication) and the `data` commands."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from data_helpers import CT_SMALL
from PIL import Image

from covidzoo.data import demo_data, find_scans, read_scan, synthesize
from covidzoo.data.synthetic import phantom
from covidzoo.errors import BadInputError

SHAPE = (8, 32, 32)


def test_synth_balanced_deterministic_layout(tmp_path):
    a = synthesize(tmp_path / "a", n=8, seed=3, shape=SHAPE)
    b = synthesize(tmp_path / "b", n=8, seed=3, shape=SHAPE)
    records = find_scans(a)
    assert sum(r.label for r in records) == 4
    assert sorted((r.split, r.label) for r in records if r.split == "val") == [("val", 0),
                                                                                ("val", 1)]
    assert {p.relative_to(a) for p in a.rglob("*")} == {p.relative_to(b) for p in b.rglob("*")}
    one = next(a.rglob("3.jpg"))
    assert one.read_bytes() == (b / one.relative_to(a)).read_bytes()
    with pytest.raises(BadInputError, match="already exists"):
        synthesize(a, n=2, shape=SHAPE)


def test_synth_dicom_reads_back_as_hu(tmp_path):
    out = synthesize(tmp_path / "d", n=2, seed=0, fmt="dicom", shape=SHAPE)
    scan = find_scans(out)[0].path
    volume = read_scan(scan)
    expected = phantom(np.random.default_rng([0, int(scan.name[-4:])]), SHAPE, covid=True)
    assert volume.shape == SHAPE and volume.spacing == (5.0, 2.5, 2.5) and not volume.warnings
    np.testing.assert_allclose(volume.array, np.clip(np.round(expected), -1024, 3071))


def test_demo_data_once_and_concurrent(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDZOO_CACHE", str(tmp_path))
    paths: list = []
    threads = [threading.Thread(target=lambda: paths.append(demo_data(n=4, shape=SHAPE)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1 and paths[0].parent == tmp_path / "demo"
    assert len(find_scans(paths[0])) == 4
    assert [p.name for p in (tmp_path / "demo").iterdir()] == [paths[0].name]  # no temp left


def test_cli_synth_prepare_inspect(invoke, tmp_path):
    out = tmp_path / "demo"
    synth = json.loads(invoke("data", "synth", str(out), "--n", "4", "--shape", "8,32,32",
                              "--json").output)
    assert synth["scans"] == 4 and synth["covid"] == 2
    prepared = json.loads(invoke("data", "prepare", str(out), "--out", str(tmp_path / "c"),
                                 "--size", "4,16,16", "--json").output)
    assert prepared["done"] == 4 and prepared["failed"] == []
    scan = find_scans(out)[0].path
    png = tmp_path / "m.png"
    info = json.loads(invoke("data", "inspect", str(scan), "--png", str(png), "--json").output)
    assert info["format"] == "slices" and info["shape"] == [8, 32, 32]
    assert Image.open(png).format == "PNG"  # the montage itself: tests/test_plots.py


def test_cli_prepare_lists_failures(invoke, tmp_path):
    bad = tmp_path / "data" / "covid" / "broken"
    bad.mkdir(parents=True)
    (bad / "0.dcm").write_bytes(b"garbage")
    (tmp_path / "data" / "non-covid").mkdir()
    np.save(tmp_path / "data" / "non-covid" / "ok.npy", np.full((4, 8, 8), -1000, np.int16))
    result = invoke("data", "prepare", str(tmp_path / "data"), "--out", str(tmp_path / "c"),
                    "--size", "2,4,4", "--no-progress")
    assert result.exit_code == 0
    assert "1 built" in result.output and "0.dcm: not a readable DICOM" in result.output


def _series_folder(tmp_path):
    import shutil

    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(CT_SMALL, folder / "a.dcm")
    return folder


@pytest.mark.parametrize("args, message", [
    (["data", "inspect", "{tmp}/nothing"], "{tmp}/nothing: no such file or folder"),
    (["data", "inspect", "{tmp}/empty"], "{tmp}/empty: empty folder"),
    (["data", "inspect", "{tmp}/nested"], "{tmp}/nested: no files, only sub-folders"),
    (["data", "inspect", "{tmp}/bad.dcm"], "{tmp}/bad.dcm: not a readable DICOM file"),
    (["data", "inspect", "{tmp}/flat.npy"], "{tmp}/flat.npy: expected a D x H x W array"),
    (["data", "inspect", "{tmp}/series", "--series", "1.2"], "{tmp}/series: no series 1.2"),
    (["data", "synth", "{tmp}/s", "--format", "png"], "unknown format 'png'"),
    (["data", "synth", "{tmp}/s", "--shape", "8,8"], "--shape takes D,H,W, got '8,8'"),
    (["data", "prepare", "{tmp}/m.csv", "--out", "{tmp}/c"], "{tmp}/m.csv:2: unknown label"),
    (["data", "prepare", "{tmp}/empty", "--out", "{tmp}/c", "--preprocess", "contrast=x"],
     "unknown contrast 'x'"),
    (["data", "prepare", "{tmp}/empty", "--out", "{tmp}/c", "--preprocess", "crop=lung"],
     "unknown crop 'lung'; choose from none, lungs"),
    (["data", "prepare", "{tmp}/empty", "--out", "{tmp}/c", "--preprocess", "spacing=1,1"],
     "--preprocess: spacing takes 3 numbers, got '1,1'"),
    (["data", "prepare", "{tmp}/empty", "--out", "{tmp}/c", "--preprocess", "crop"],
     "--preprocess takes KEY=VALUE[,KEY=VALUE...], got 'crop'"),
    (["data", "prepare", "{tmp}/empty", "--out", "{tmp}/c", "--preprocess", "fit=pad"],
     "fit=pad needs spacing=X,Y,Z (mm)"),
    (["data", "prepare", "{tmp}/empty", "--out", "{tmp}/c", "--preprocess", "size=1,2,3"],
     "--preprocess: the size has its own flag, --size D,H,W"),
])
def test_cli_bad_input_is_one_line_exit_2(runner, tmp_path, args, message):
    from covidzoo.cli import cli

    (tmp_path / "empty").mkdir()
    (tmp_path / "nested" / "series").mkdir(parents=True)
    (tmp_path / "bad.dcm").write_bytes(b"not dicom at all")
    np.save(tmp_path / "flat.npy", np.zeros((3, 3)))
    (tmp_path / "m.csv").write_text("path,label\nx,sick\n")
    _series_folder(tmp_path)
    result = runner.invoke(cli, [a.replace("{tmp}", str(tmp_path)) for a in args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: " + message.replace("{tmp}",
                                                                                str(tmp_path)))
