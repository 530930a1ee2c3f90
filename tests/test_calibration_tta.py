"""`covidzoo calibrate` (temperature stored with the model, used by predict and evaluate),
test-time augmentation (`--tta`), calibration figures and `evaluate --by` subgroups."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from covidzoo.errors import BadInputError


def run_json(invoke, *args: str) -> dict:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def one_line(invoke, *args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --- calibrate ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated(inference_env, tmp_path_factory):
    """Checkpoint `a` calibrated on the val split into a copy."""
    from click.testing import CliRunner

    from covidzoo.cli import cli

    out = tmp_path_factory.mktemp("calibrated") / "a-cal.safetensors"
    result = CliRunner().invoke(cli, ["calibrate", str(inference_env.a), "--data",
                                      str(inference_env.data), "--out", str(out), "--json"],
                                catch_exceptions=False,
                                env={"COVIDZOO_CACHE": str(inference_env.root / "cache")})
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_calibrate_stores_a_temperature_fitted_on_the_split(inference_env, calibrated):
    from covidzoo.checkpoint import read_spec
    from covidzoo.stats import fit_temperature

    out, report = calibrated
    spec = read_spec(out)
    assert spec.temperature == pytest.approx(report["temperature"])
    assert spec.extra["calibration"]["split"] == "val" and report["scans"] == 6
    # The same temperature, fitted by hand on the uncalibrated model's val probabilities.
    raw = run_json_env(inference_env, "evaluate", str(inference_env.a), "--data",
                       str(inference_env.data), "--predictions",
                       str(out.parent / "raw.csv"))
    rows = [line.split(",") for line in (out.parent / "raw.csv").read_text().splitlines()[1:]]
    labels = np.array([1 if r[1] == "covid" else 0 for r in rows])
    probs = np.array([float(r[2]) for r in rows])
    assert report["temperature"] == pytest.approx(fit_temperature(labels, probs), rel=1e-6)
    assert raw["metrics"]["calibration"]["log_loss"] == pytest.approx(
        report["before"]["log_loss"], rel=1e-9)
    assert report["after"]["log_loss"] <= report["before"]["log_loss"] + 1e-12


def run_json_env(env, *args: str) -> dict:
    from click.testing import CliRunner

    from covidzoo.cli import cli

    result = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False,
                                env={"COVIDZOO_CACHE": str(env.root / "cache")})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_calibrated_probabilities_are_the_raw_ones_at_the_temperature_labels_kept(
        inference_env, calibrated):
    from covidzoo.stats import apply_temperature

    out, report = calibrated
    scans = sorted(str(p) for p in (inference_env.data / "val" / "covid").iterdir())
    raw = run_json_env(inference_env, "predict", str(inference_env.a), *scans)
    cal = run_json_env(inference_env, "predict", str(out), *scans)
    p_raw = np.array([p["probability"] for p in raw["predictions"]])
    p_cal = np.array([p["probability"] for p in cal["predictions"]])
    np.testing.assert_allclose(p_cal, apply_temperature(p_raw, report["temperature"]),
                               atol=1e-6)
    assert [p["label"] for p in raw["predictions"]] == [p["label"] for p in cal["predictions"]]
    assert cal["threshold"]["value"] == pytest.approx(report["threshold"]["after"])


def test_evaluate_on_the_calibration_split_says_it_is_optimistic(inference_env, calibrated):
    out, _ = calibrated
    report = run_json_env(inference_env, "evaluate", str(out), "--data",
                          str(inference_env.data))
    assert any("temperature was fitted on val" in n for n in report["notes"])
    other = run_json_env(inference_env, "evaluate", str(out), "--data",
                         str(inference_env.data), "--split", "train")
    assert not any("temperature was fitted" in n for n in other["notes"])


def test_calibrate_an_ensemble_file(inference_env, tmp_path):
    from covidzoo.ensemble import create_ensembler
    from covidzoo.inference import load_predictor, write_ensemble_file

    ensembler = create_ensembler("mean")
    ensembler.n_models = 2
    ens = write_ensemble_file(tmp_path / "e.json", [inference_env.a, inference_env.b],
                              ensembler, 0.5)
    out = tmp_path / "sub" / "e-cal.json"
    out.parent.mkdir()
    report = run_json_env(inference_env, "calibrate", str(ens), "--data",
                          str(inference_env.data), "--out", str(out))
    predictor = load_predictor(out)
    assert predictor.temperature == pytest.approx(report["temperature"])
    assert predictor.threshold == pytest.approx(report["threshold"]["after"])
    assert [m.path.resolve() for m in predictor.members] == [inference_env.a.resolve(),
                                                             inference_env.b.resolve()]


@pytest.mark.parametrize("extra, needle", [
    ((), "give --out FILE for a calibrated copy, or --in-place"),
    (("--in-place", "--out", "x.safetensors"), "one of the two"),
    (("--out", "x.json"), "a checkpoint is written as .safetensors"),
])
def test_calibrate_bad_targets_are_one_line(inference_env, invoke, extra, needle):
    line = one_line(invoke, "calibrate", str(inference_env.a), "--data",
                    str(inference_env.data), *extra)
    assert needle in line


def test_calibrate_in_place_refuses_a_run_folder_link(inference_env, invoke, tmp_path):
    target = tmp_path / "generation" / "best.safetensors"
    target.parent.mkdir()
    target.write_bytes(inference_env.a.read_bytes())
    link = tmp_path / "best.safetensors"
    os.symlink(target, link)
    line = one_line(invoke, "calibrate", str(link), "--data", str(inference_env.data),
                    "--in-place")
    assert "a run folder's link" in line
    assert link.is_symlink()


def test_calibrate_in_place_rewrites_the_file(inference_env, invoke, tmp_path):
    from covidzoo.checkpoint import read_spec

    copy = tmp_path / "a.safetensors"
    copy.write_bytes(inference_env.a.read_bytes())
    report = run_json_env(inference_env, "calibrate", str(copy), "--data",
                          str(inference_env.data), "--in-place")
    assert read_spec(copy).temperature == pytest.approx(report["temperature"])


def test_temperature_must_be_positive_in_a_checkpoint():
    from covidzoo.checkpoint import ModelSpec

    data = ModelSpec("regnet3d").to_dict()
    for bad in (0, -1.0, float("nan"), "2", True):
        with pytest.raises(BadInputError, match="temperature"):
            ModelSpec.from_dict({**data, "temperature": bad})


# --- test-time augmentation ----------------------------------------------------------------------


def test_tta_views():
    from covidzoo.transforms import tta_views

    x = torch.arange(2 * 1 * 2 * 32 * 64, dtype=torch.float32).view(2, 1, 2, 32, 64)
    assert tta_views(x, "none") == [x] or torch.equal(tta_views(x, "none")[0], x)
    flip = tta_views(x, "flip")
    assert len(flip) == 2 and torch.equal(flip[1], x.flip(-1))
    shift = tta_views(x, "flip+shift")
    assert len(shift) == 6 and torch.equal(shift[2], torch.roll(x, 1, dims=-2))
    assert torch.equal(shift[4], torch.roll(x, 2, dims=-1))
    with pytest.raises(ValueError, match="unknown --tta"):
        tta_views(x, "rotate")


def test_member_probability_with_tta_is_the_mean_over_the_views(inference_env):
    from covidzoo.inference import load_member

    member = load_member(inference_env.a)
    batch = torch.randint(0, 255, (3, 1, 8, 32, 32), dtype=torch.uint8)
    plain = member.probs(batch)
    mirrored = member.probs(batch.flip(-1))
    member.tta = "flip"
    torch.testing.assert_close(member.probs(batch), (plain + mirrored) / 2)


def test_evaluate_with_tta_reports_it(inference_env):
    report = run_json_env(inference_env, "evaluate", str(inference_env.a), "--data",
                          str(inference_env.data), "--tta", "flip+shift")
    assert report["tta"] == "flip+shift"
    assert any("--tta flip+shift" in n for n in report["notes"])


# --- calibration figures and subgroups ------------------------------------------------------------


def test_evaluate_reports_calibration_and_writes_the_reliability_diagram(inference_env,
                                                                         tmp_path):
    from PIL import Image

    from covidzoo.stats import brier_score, expected_calibration_error

    png = tmp_path / "rel.png"
    report = run_json_env(inference_env, "evaluate", str(inference_env.a), "--data",
                          str(inference_env.data), "--reliability", str(png),
                          "--predictions", str(tmp_path / "p.csv"))
    rows = [line.split(",") for line in (tmp_path / "p.csv").read_text().splitlines()[1:]]
    labels = np.array([1 if r[1] == "covid" else 0 for r in rows])
    probs = np.array([float(r[2]) for r in rows])
    cal = report["metrics"]["calibration"]
    assert cal["ece"] == pytest.approx(expected_calibration_error(labels, probs), abs=1e-12)
    assert cal["brier"] == pytest.approx(brier_score(labels, probs), abs=1e-12)
    assert Image.open(png).size == (640, 640) and report["reliability"] == str(png)


def _site_manifest(env, tmp_path: Path) -> Path:
    """The test data as a manifest with a site column: two sites, one of them larger."""
    from covidzoo.data.layouts import find_scans

    lines = ["path,label,split,site"]
    for i, record in enumerate(find_scans(env.data)):
        label = "" if record.label is None else record.label
        lines.append(f"{record.path},{label},{record.split},{'A' if i % 3 else 'B'}")
    path = tmp_path / "sites.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_subgroups_are_the_metrics_of_each_site(inference_env, tmp_path):
    from covidzoo.metrics import binary_report

    manifest = _site_manifest(inference_env, tmp_path)
    report = run_json_env(inference_env, "evaluate", str(inference_env.a), "--manifest",
                          str(manifest), "--split", "all", "--by", "site", "--bootstrap", "50",
                          "--predictions", str(tmp_path / "p.csv"))
    sub = report["subgroups"]
    assert sub["by"] == "site" and set(sub["groups"]) == {"A", "B"}
    sites = {line.split(",")[0]: line.split(",")[3] for line in
             manifest.read_text().splitlines()[1:]}
    rows = [line.split(",") for line in (tmp_path / "p.csv").read_text().splitlines()[1:]]
    for site in ("A", "B"):
        mine = [r for r in rows if sites[r[0]] == site]
        labels = np.array([1 if r[1] == "covid" else 0 for r in mine])
        probs = np.array([float(r[2]) for r in mine])
        expected = binary_report(labels, probs, 0.42)
        got = sub["groups"][site]
        assert got["n"] == len(mine) == sub["counts"][site]
        for key in ("auc", "f1", "macro_f1", "sensitivity", "specificity"):
            assert got[key] == pytest.approx(expected[key], abs=1e-12) or got[key] is None
        assert "bootstrap" in got
    scored = {s: g["auc"] for s, g in sub["groups"].items() if g["auc"] is not None}
    assert sub["worst"]["group"] == min(scored, key=scored.get)
    assert sub["mean_group_macro_f1"] == pytest.approx(
        np.mean([g["macro_f1"] for g in sub["groups"].values()]))


def test_by_needs_a_manifest_column(inference_env, invoke, tmp_path):
    assert "groups are a column of a --manifest" in one_line(
        invoke, "evaluate", str(inference_env.a), "--data", str(inference_env.data),
        "--by", "site")
    manifest = _site_manifest(inference_env, tmp_path)
    line = one_line(invoke, "evaluate", str(inference_env.a), "--manifest", str(manifest),
                    "--by", "scanner")
    assert "--by scanner" in line and "its columns: path, label, split, site" in line


def test_a_temperature_at_the_edge_of_its_range_is_said(tmp_path):
    from covidzoo.calibration import CalibrationReport

    def note(temperature: float) -> str:
        return CalibrationReport(tmp_path, tmp_path, "checkpoint", "d", "val", 4, temperature,
                                 None, None, {}, {}).to_dict()["note"]

    assert "edge of its search range" in note(20.0)
    assert "edge of its search range" in note(0.05)
    assert "edge" not in note(1.7)
