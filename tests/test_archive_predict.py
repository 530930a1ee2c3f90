"""predict --manifest --out: prediction over an archive, sharded across processes, resumable.

Two tests run torchrun with two gloo processes on the CPU (subprocesses, on purpose); the rest
drive the command in-process. Models are tiny and random: the tests check where rows go, not
what the probabilities are worth.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from model_helpers import hand_probs, make_checkpoint

from covidzoo.archive import (
    COLUMNS,
    KILL_AFTER_ENV,
    errors_path,
    part_path,
    prediction_columns,
)

N_SCANS = 9


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Two tiny checkpoints (`a` with threshold 0.42) and a manifest of .npy scans, listed out
    of name order, with one scan that cannot be read (at `bad`, listed fourth)."""
    root = tmp_path_factory.mktemp("archive")
    a = make_checkpoint(root / "a.safetensors", (8, 32, 32), seed=0, threshold=0.42)
    b = make_checkpoint(root / "b.safetensors", (8, 32, 32), seed=1)
    rng = np.random.default_rng(7)
    scans = root / "scans"
    scans.mkdir()
    names = [f"s{i}.npy" for i in rng.permutation(N_SCANS)]
    for name in names:
        volume = rng.normal(-600, 300, (9, 30, 30)).astype(np.float32)
        np.save(scans / name, volume)
    (scans / "bad.npy").write_bytes(b"not numpy")
    listed = [f"scans/{n}" for n in names]
    listed.insert(3, "scans/bad.npy")
    manifest = root / "scans.csv"
    manifest.write_text("path\n" + "\n".join(listed) + "\n")
    good = [str(root / p) for p in listed if not p.endswith("bad.npy")]
    return SimpleNamespace(root=root, a=a, b=b, manifest=manifest, listed=listed, good=good,
                           bad=str(root / "scans/bad.npy"))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def predict(invoke, archive, out: Path, *args: str, model: Path | None = None) -> dict:
    result = invoke("predict", str(model or archive.a), "--manifest", str(archive.manifest),
                    "--out", str(out), "--device", "cpu", "--batch-size", "2", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def fails(runner, *args: str) -> str:
    """A command expected to fail on bad input: exit 2 and one line on stderr."""
    from covidzoo.cli import cli

    result = runner.invoke(cli, [*args, "--device", "cpu"])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def reference(archive, tmp_path_factory):
    """One uninterrupted single-process run: the file every other route must reproduce."""
    from click.testing import CliRunner

    from covidzoo.cli import cli

    out = tmp_path_factory.mktemp("reference") / "predictions.csv"
    result = CliRunner().invoke(cli, ["predict", str(archive.a), "--manifest",
                                      str(archive.manifest), "--out", str(out), "--device",
                                      "cpu", "--batch-size", "2", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def assert_same_rows(got: Path, expected: Path) -> None:
    """Row for row: scans in the same order, equal labels, thresholds and hashes; equal
    probabilities up to float32 rounding (batches hold other scans in other runs)."""
    rows, want = read_rows(got), read_rows(expected)
    assert [r["scan"] for r in rows] == [r["scan"] for r in want]
    for key in ("label", "threshold", "model_hash"):
        assert [r[key] for r in rows] == [r[key] for r in want]
    np.testing.assert_allclose([float(r["probability"]) for r in rows],
                               [float(r["probability"]) for r in want], rtol=0, atol=1e-6)


# --- one process ---------------------------------------------------------------------------------


def test_rows_in_manifest_order_with_the_models_probabilities(archive, reference):
    rows = read_rows(reference)
    assert list(rows[0]) == list(COLUMNS)
    assert [r["scan"] for r in rows] == archive.good  # manifest order, not name order
    probs = np.asarray([float(r["probability"]) for r in rows])
    np.testing.assert_allclose(probs, hand_probs(archive.a, archive.good), atol=1e-5)
    assert {r["threshold"] for r in rows} == {"0.42"}
    assert [r["label"] for r in rows] == ["covid" if p >= 0.42 else "non-covid" for p in probs]
    assert len({r["model_hash"] for r in rows}) == 1
    assert not list(reference.parent.glob("*.part"))  # the parts are merged and gone


def test_manifest_run_agrees_with_predicting_the_scans_by_name(archive, invoke, reference):
    """The same numbers as `predict SCAN...` (today's table route) for the same scans."""
    result = invoke("predict", str(archive.a), *archive.good[:3], "--device", "cpu", "--json")
    listed = json.loads(result.stdout)["predictions"]
    rows = read_rows(reference)[:3]
    assert [p["scan"] for p in listed] == [r["scan"] for r in rows]
    np.testing.assert_allclose([p["probability"] for p in listed],
                               [float(r["probability"]) for r in rows], atol=1e-6)


def test_unreadable_scan_goes_to_the_errors_file_and_is_retried(archive, invoke, reference,
                                                                 tmp_path):
    errors = errors_path(reference)
    assert errors.name == "predictions.errors.csv"
    (failed,) = read_rows(errors)
    assert failed["scan"] == archive.bad and "not a readable numpy file" in failed["reason"]

    scans = tmp_path / "scans"  # a copy of the archive whose bad scan gets fixed
    scans.mkdir()
    for path in (archive.root / "scans").iterdir():
        (scans / path.name).write_bytes(path.read_bytes())
    manifest = tmp_path / "scans.csv"
    manifest.write_text(archive.manifest.read_text())
    out = tmp_path / "predictions.csv"
    copy = SimpleNamespace(**{**vars(archive), "manifest": manifest})
    first = predict(invoke, copy, out)
    assert (first["predicted"], first["failed"]) == (N_SCANS, 1)
    assert first["errors"] == str(errors_path(out))
    np.save(scans / "bad.npy", np.full((9, 30, 30), -1000, np.float32))  # air: a scan
    second = predict(invoke, copy, out)
    assert (second["already_done"], second["predicted"], second["failed"]) == (N_SCANS, 1, 0)
    assert [r["scan"] for r in read_rows(out)] == [str(tmp_path / p) for p in archive.listed]
    assert not errors_path(out).exists()  # nothing failed any more


def test_rerun_predicts_nothing_and_leaves_the_file_as_it_was(archive, invoke, reference,
                                                              tmp_path):
    out = tmp_path / "predictions.csv"
    out.write_bytes(reference.read_bytes())
    again = predict(invoke, archive, out)
    assert (again["already_done"], again["predicted"], again["rows"]) == (N_SCANS, 0, N_SCANS)
    assert out.read_bytes() == reference.read_bytes()


def test_loader_workers_read_for_the_process_and_give_the_same_file(archive, invoke, reference,
                                                                    tmp_path):
    out = tmp_path / "predictions.csv"
    report = predict(invoke, archive, out, "--workers", "2")
    assert (report["workers"], report["predicted"], report["failed"]) == (2, N_SCANS, 1)
    assert report["profile"]["read_s"] > 0 and report["profile"]["preprocess_s"] > 0
    assert out.read_bytes() == reference.read_bytes()
    assert read_rows(errors_path(out)) == read_rows(errors_path(reference))


def test_the_summary_for_people_says_what_was_done_and_where(archive, invoke, reference,
                                                             tmp_path):
    out = tmp_path / "predictions.csv"
    out.write_bytes(reference.read_bytes())
    result = invoke("predict", str(archive.a), "--manifest", str(archive.manifest), "--out",
                    str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"{N_SCANS + 1} scans: {N_SCANS} already in {out}, 0 predicted now" in result.stdout
    assert f"wrote {out} ({N_SCANS} rows, model " in result.stdout
    assert f"1 scan(s) failed; reasons in {errors_path(out)}" in result.stderr


def test_a_part_file_cut_mid_row_is_resumed(archive, invoke, reference, tmp_path):
    """What a kill leaves: a part file whose last row was cut short."""
    out = tmp_path / "predictions.csv"
    lines = reference.read_text().splitlines(keepends=True)
    part_path(out, 0).write_text("".join(lines[:4]) + lines[4][:20])  # 3 rows and a half
    resumed = predict(invoke, archive, out)
    assert (resumed["already_done"], resumed["predicted"]) == (3, N_SCANS - 3)
    assert out.read_bytes() == reference.read_bytes()
    assert not part_path(out, 0).exists()


def test_another_models_predictions_are_refused_unless_replaced(archive, invoke, runner,
                                                                reference, tmp_path):
    out = tmp_path / "predictions.csv"
    out.write_bytes(reference.read_bytes())
    line = fails(runner, "predict", str(archive.b), "--manifest", str(archive.manifest), "--out",
                 str(out))
    assert "holds predictions of another model" in line and "--replace" in line
    assert out.read_bytes() == reference.read_bytes()
    replaced = predict(invoke, archive, out, "--replace", model=archive.b)
    assert replaced["predicted"] == N_SCANS
    assert {r["model_hash"] for r in read_rows(out)} == {replaced["model_hash"]}
    assert replaced["model_hash"] != read_rows(reference)[0]["model_hash"]


def test_an_ensemble_is_hashed_with_its_members(archive, tmp_path):
    from covidzoo.archive import model_hash
    from covidzoo.ensemble import create_ensembler
    from covidzoo.inference import load_predictor, write_ensemble_file

    a, b = (tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    a.write_bytes(archive.a.read_bytes())
    b.write_bytes(archive.b.read_bytes())
    mean = create_ensembler("mean").fit(np.array([[0.2, 0.4], [0.6, 0.8]]), np.array([0, 1]))
    ensemble = write_ensemble_file(tmp_path / "ens.json", [a, b], mean, 0.5)
    before = model_hash(load_predictor(ensemble))
    b.write_bytes(archive.a.read_bytes())  # the same file names, another member
    assert model_hash(load_predictor(ensemble)) != before


def test_parquet_holds_the_csv_rows_and_resumes(archive, invoke, reference, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "predictions.parquet"
    first = predict(invoke, archive, out, "--format", "parquet")
    assert first["predicted"] == N_SCANS
    table = pq.read_table(out)
    assert table.column_names == list(COLUMNS)
    rows = read_rows(reference)
    assert table.column("scan").to_pylist() == [r["scan"] for r in rows]
    assert table.column("probability").to_pylist() == [float(r["probability"]) for r in rows]
    again = predict(invoke, archive, out, "--format", "parquet")
    assert (again["already_done"], again["predicted"]) == (N_SCANS, 0)


# --- three or more classes ------------------------------------------------------------------------

CLASSES = ("cap", "covid", "normal")


@pytest.fixture(scope="module")
def three(archive):
    """A tiny random model of three classes beside the binary ones."""
    return make_checkpoint(archive.root / "three.safetensors", (8, 32, 32), seed=2,
                           classes=CLASSES)


def test_a_three_class_model_writes_every_class_probability(archive, invoke, three, tmp_path):
    out = tmp_path / "classes.csv"
    report = predict(invoke, archive, out, model=three)
    assert report["threshold"] is None and report["predicted"] == N_SCANS
    rows = read_rows(out)
    assert tuple(rows[0]) == prediction_columns(CLASSES) == (
        "scan", "label", "probability", "p_cap", "p_covid", "p_normal", "model_hash")
    assert [r["scan"] for r in rows] == archive.good
    probs = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    np.testing.assert_allclose(probs, hand_probs(three, archive.good), atol=1e-5)
    assert [r["label"] for r in rows] == [CLASSES[k] for k in probs.argmax(1)]
    assert [float(r["probability"]) for r in rows] == list(probs.max(1))
    again = predict(invoke, archive, out, model=three)
    assert (again["already_done"], again["predicted"]) == (N_SCANS, 0)
    summary = invoke("predict", str(three), "--manifest", str(archive.manifest), "--out",
                     str(out), "--device", "cpu")
    assert summary.exit_code == 0 and f"wrote {out}" in summary.stdout, summary.output


def test_a_three_class_parquet_file_resumes(archive, invoke, three, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "classes.parquet"
    csv_rows = read_rows(_written(invoke, archive, tmp_path / "classes.csv", three))
    predict(invoke, archive, out, "--format", "parquet", model=three)
    table = pq.read_table(out)
    assert table.column_names == list(prediction_columns(CLASSES))
    assert table.column("label").to_pylist() == [r["label"] for r in csv_rows]
    np.testing.assert_allclose(table.column("p_normal").to_pylist(),
                               [float(r["p_normal"]) for r in csv_rows], atol=1e-6)
    again = predict(invoke, archive, out, "--format", "parquet", model=three)
    assert (again["already_done"], again["predicted"]) == (N_SCANS, 0)


def _written(invoke, archive, out: Path, model: Path) -> Path:
    predict(invoke, archive, out, model=model)
    return out


def test_binary_and_three_class_predictions_replace_each_other_only_when_asked(
        archive, invoke, runner, three, reference, tmp_path):
    out = tmp_path / "predictions.csv"
    out.write_bytes(reference.read_bytes())
    line = fails(runner, "predict", str(three), "--manifest", str(archive.manifest), "--out",
                 str(out))
    assert "holds predictions of another model" in line
    assert out.read_bytes() == reference.read_bytes()
    predict(invoke, archive, out, "--replace", model=three)
    assert tuple(read_rows(out)[0]) == prediction_columns(CLASSES)
    predict(invoke, archive, out, "--replace")
    assert_same_rows(out, reference)


def test_another_models_part_of_other_columns_is_dropped_under_replace(
        archive, invoke, three, reference, tmp_path):
    """A killed binary job left a part file; the three-class job asked to --replace must not
    append its rows under the binary header."""
    out = tmp_path / "predictions.csv"
    part_path(out, 0).write_bytes(reference.read_bytes())
    report = predict(invoke, archive, out, "--replace", model=three)
    assert report["predicted"] == N_SCANS
    rows = read_rows(out)
    assert tuple(rows[0]) == prediction_columns(CLASSES) and len(rows) == N_SCANS
    assert {r["model_hash"] for r in rows} == {report["model_hash"]}
    assert not part_path(out, 0).exists()


def test_parquet_without_pyarrow_says_install_it(archive, runner, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now fails
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    line = fails(runner, "predict", str(archive.a), "--manifest", str(archive.manifest),
                 "--out", str(tmp_path / "p.parquet"), "--format", "parquet")
    assert "install pyarrow" in line
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    ([], "give SCAN... or --manifest CSV"),
    (["scan.npy", "--manifest", "m.csv"], "give either SCAN... or --manifest"),
    (["scan.npy", "--format", "csv"], "--format: it is the format of --out"),
    (["scan.npy", "--replace"], "--replace: it replaces predictions in --out"),
])
def test_bad_combinations_are_one_line(archive, runner, args, message):
    assert message in fails(runner, "predict", str(archive.a), *args)


def test_a_file_that_is_not_a_predictions_file_is_left_alone(archive, runner, tmp_path):
    out = tmp_path / "notes.csv"
    out.write_text("name,value\nx,1\n")
    line = fails(runner, "predict", str(archive.a), "--manifest", str(archive.manifest),
                 "--out", str(out))
    assert "not a predictions file of covidzoo predict" in line
    assert out.read_text() == "name,value\nx,1\n"
    manifest = tmp_path / "nopath.csv"
    manifest.write_text("scan\nx.npy\n")
    assert "missing column(s) path" in fails(runner, "predict", str(archive.a), "--manifest",
                                             str(manifest), "--out", str(tmp_path / "p.csv"))


# --- torchrun: two gloo processes ----------------------------------------------------------------


def torchrun(archive, out: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "covidzoo", "predict", str(archive.a), "--manifest", str(archive.manifest),
           "--out", str(out), "--device", "cpu", "--threads", "1", "--batch-size", "2",
           "--json"]
    try:  # seconds alone; minutes on a 2-core machine that other work keeps busy
        return subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"torchrun still running after {exc.timeout} s: {exc.stderr!r:.2000}")


@pytest.mark.slow
def test_two_processes_merge_to_the_single_process_rows(archive, reference, tmp_path):
    out = tmp_path / "predictions.csv"
    done = torchrun(archive, out)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)  # rank 0 alone reports
    assert (report["processes"], report["predicted"], report["failed"]) == (2, N_SCANS, 1)
    assert_same_rows(out, reference)
    assert read_rows(errors_path(out)) == read_rows(errors_path(reference))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv",
                                                          "predictions.errors.csv"]


@pytest.mark.slow
def test_a_run_killed_halfway_and_restarted_produces_the_same_file(archive, invoke, reference,
                                                                    tmp_path):
    out = tmp_path / "predictions.csv"
    killed = torchrun(archive, out, {KILL_AFTER_ENV: "2"})  # a rank dies after 2 scans
    assert killed.returncode != 0
    assert not out.exists() and part_path(out, 0).exists()
    restarted = predict(invoke, archive, out)  # one process takes over
    assert restarted["already_done"] >= 2 and restarted["predicted"] < N_SCANS
    assert restarted["already_done"] + restarted["predicted"] == N_SCANS
    assert_same_rows(out, reference)
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rows_match_the_cpu_rows(archive, invoke, reference, tmp_path):
    """On CUDA the loader pins each batch (`ReadBatch.pin_memory`) and copies it asynchronously."""
    out = tmp_path / "predictions.csv"
    result = invoke("predict", str(archive.a), "--manifest", str(archive.manifest), "--out",
                    str(out), "--device", "cuda", "--precision", "fp32", "--workers", "2",
                    "--json")
    assert result.exit_code == 0, result.output
    rows, want = read_rows(out), read_rows(reference)
    assert [r["scan"] for r in rows] == [r["scan"] for r in want]
    np.testing.assert_allclose([float(r["probability"]) for r in rows],
                               [float(r["probability"]) for r in want], atol=1e-4)
