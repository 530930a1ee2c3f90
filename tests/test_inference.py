"""evaluate, ensemble and predict: consistency of the inference path, threshold rules, bad input.

Models are tiny and random: the tests check that every route to a probability (cache, raw scan,
folded or not, fused or not) gives the same number, not that the models are any good.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import TINY, hand_probs, make_checkpoint, tiny2d_registered

import covidzoo
from covidzoo import inference
from covidzoo.checkpoint import ModelSpec
from covidzoo.data import find_scans, synthesize
from covidzoo.ensemble import create_ensembler
from covidzoo.metrics import binary_report, youden_threshold
from covidzoo.models.folding import count_batchnorms


@pytest.fixture(scope="module")
def env(inference_env):
    return inference_env


def records(env, split):
    return [r for r in find_scans(root=env.data) if r.split == split]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def run_json(invoke, *args):
    result = invoke(*args, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def fails(runner, *args) -> str:
    """Run a command expected to fail on bad input: exit 2 and one line on stderr."""
    from covidzoo.cli import cli

    result = runner.invoke(cli, [*args, "--device", "cpu"])
    assert result.exit_code == 2, (result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    return errors[0]


# --- evaluate ----------------------------------------------------------------------------------


def test_evaluate_json_schema_roc_and_predictions(env, invoke, tmp_path):
    out = run_json(invoke, "evaluate", str(env.a), "--data", str(env.data), "--bootstrap", "20",
                   "--roc", str(tmp_path / "roc.png"), "--predictions", str(tmp_path / "p.csv"))
    assert set(out) == {"model", "kind", "members", "data", "split", "classes", "preprocess",
                        "threshold", "metrics", "subgroups", "tta", "failed", "unlabelled",
                        "device", "precision", "timing", "roc", "predictions", "reliability",
                        "report", "notes"}
    assert out["kind"] == "checkpoint" and out["split"] == "val" and out["failed"] == []
    assert out["threshold"] == {"value": 0.42, "source": "checkpoint",
                                "note": "chosen on validation data"}
    assert out["precision"] == ["fp32"] and out["device"] == "cpu"
    timing = out["timing"]
    assert timing["scans"] == out["metrics"]["n"] == 6
    assert 0 < timing["inference_s"] <= timing["total_s"]
    assert timing["inference_volumes_per_s"] >= timing["total_volumes_per_s"] > 0
    assert out["metrics"]["bootstrap"]["n_boot"] == 20
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = read_csv(tmp_path / "p.csv")
    val = records(env, "val")
    assert [r["path"] for r in rows] == [str(r.path.resolve()) for r in val]
    probs = np.array([float(r["probability"]) for r in rows])
    # Cache + DataLoader + folded BatchNorm == raw scan through the unfolded model.
    np.testing.assert_allclose(probs, hand_probs(env.a, [r.path for r in val]), atol=1e-5)
    labels = [r.label for r in val]
    assert [r["label"] for r in rows] == ["covid" if y else "non-covid" for y in labels]
    assert [r["predicted"] for r in rows] == ["covid" if p >= 0.42 else "non-covid"
                                             for p in probs]
    expected = binary_report(labels, probs, 0.42)
    assert out["metrics"]["auc"] == pytest.approx(expected["auc"], abs=1e-9)
    assert out["metrics"]["confusion_matrix"] == expected["confusion_matrix"]


def test_evaluate_table_for_people(env, invoke):
    result = invoke("evaluate", str(env.a), "--data", str(env.data), "--device", "cpu")
    assert result.exit_code == 0
    assert "macro F1" in result.stdout and "volumes/s" in result.stdout
    assert "0.4200 (checkpoint: chosen on validation data)" in result.stdout


def test_threshold_sources(env, invoke, tmp_path):
    args = ("evaluate", str(env.a), "--data", str(env.data), "--predictions",
            str(tmp_path / "p.csv"))
    youden = run_json(invoke, *args, "--threshold", "youden")
    probs = [float(r["probability"]) for r in read_csv(tmp_path / "p.csv")]
    labels = [r.label for r in records(env, "val")]
    assert youden["threshold"]["source"] == "youden"
    assert "optimistic" in youden["threshold"]["note"]
    assert youden["threshold"]["value"] == youden_threshold(labels, probs)
    given = run_json(invoke, *args, "--threshold", "0.3")
    assert given["threshold"]["source"] == "option" and given["metrics"]["threshold"] == 0.3
    # b stores no threshold: 0.5, and the output says so.
    default = run_json(invoke, "evaluate", str(env.b), "--data", str(env.data))
    assert default["threshold"]["value"] == 0.5 and default["threshold"]["source"] == "default"
    assert "stores no threshold" in default["threshold"]["note"]


@pytest.mark.parametrize("value", ["median", "1.5"])
def test_bad_threshold_option(env, runner, value):
    line = fails(runner, "evaluate", str(env.a), "--data", str(env.data), "--threshold", value)
    assert "--threshold" in line


# --- ensemble ----------------------------------------------------------------------------------


def test_ensemble_of_one_model_equals_the_model(env, invoke, tmp_path):
    single = run_json(invoke, "ensemble", str(env.a), "--data", str(env.data),
                      "--save", str(tmp_path / "one.json"))
    member, fusion = single["members"][0], single["fusion"]
    for key in ("auc", "f1", "macro_f1", "confusion_matrix", "threshold"):
        assert fusion[key] == member[key]
    # No test split: cross-fitted on val, and val is where the members were selected.
    assert single["estimate"] == "cross-fitted" and single["in_sample"] is False
    assert "cross-fitted" in single["notes"][0] and "selection-biased" in single["notes"][1]
    a = run_json(invoke, "evaluate", str(env.a), "--data", str(env.data), "--predictions",
                 str(tmp_path / "a.csv"))
    one = run_json(invoke, "evaluate", str(tmp_path / "one.json"), "--data", str(env.data),
                   "--predictions", str(tmp_path / "one.csv"))
    assert one["kind"] == "ensemble" and one["threshold"]["source"] == "ensemble file"
    assert one["metrics"]["auc"] == a["metrics"]["auc"]
    probs_a = [float(r["probability"]) for r in read_csv(tmp_path / "a.csv")]
    probs_one = [float(r["probability"]) for r in read_csv(tmp_path / "one.csv")]
    np.testing.assert_allclose(probs_one, probs_a, rtol=0, atol=1e-12)


def test_mean_fusion_is_the_hand_computed_mean_and_round_trips(env, invoke, tmp_path):
    """Members with different preprocessing (8 and 16 slices) fuse scan by scan; the saved file
    works in evaluate and predict."""
    saved = tmp_path / "sub" / "ens.json"
    out = run_json(invoke, "ensemble", str(env.a), str(env.b), "--data", str(env.data),
                   "--method", "mean", "--save", str(saved), "--roc", str(tmp_path / "roc.png"))
    val = records(env, "val")
    expected = (hand_probs(env.a, [r.path for r in val]) +
                hand_probs(env.b, [r.path for r in val])) / 2
    labels = [r.label for r in val]
    assert out["threshold"] == pytest.approx(youden_threshold(labels, expected), abs=1e-6)
    assert (tmp_path / "roc.png").is_file()

    document = json.loads(saved.read_text())
    assert document["format"] == 1 and document["covidzoo_version"] == covidzoo.__version__
    assert not any(Path(m).is_absolute() for m in document["members"])
    assert [(saved.parent / m).resolve() for m in document["members"]] == [
        env.a.resolve(), env.b.resolve()]
    assert document["ensembler"]["method"] == "mean"
    assert document["threshold"] == out["threshold"]

    evaluated = run_json(invoke, "evaluate", str(saved), "--data", str(env.data),
                         "--predictions", str(tmp_path / "p.csv"))
    probs = [float(r["probability"]) for r in read_csv(tmp_path / "p.csv")]
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert evaluated["threshold"]["value"] == out["threshold"]

    scans = [str(r.path) for r in val[:2]]
    predicted = run_json(invoke, "predict", str(saved), *scans, "--csv", str(tmp_path / "q.csv"))
    got = [p["probability"] for p in predicted["predictions"]]
    np.testing.assert_allclose(got, expected[:2], atol=1e-5)
    for p in predicted["predictions"]:
        assert p["threshold"] == out["threshold"]
        assert p["label"] == ("covid" if p["probability"] >= out["threshold"] else "non-covid")
        assert len(p["member_probabilities"]) == 2
    assert predicted["members"] == [str(saved.parent / m) for m in document["members"]]
    assert [r["scan"] for r in read_csv(tmp_path / "q.csv")] == scans


@pytest.mark.parametrize("method", ["weighted", "stacking"])
def test_learned_ensemblers_fit_on_the_fit_split_only(env, invoke, tmp_path, method):
    out = run_json(invoke, "ensemble", str(env.a), str(env.b), "--data", str(env.data),
                   "--method", method, "--fit-split", "val", "--split", "train",
                   "--save", str(tmp_path / "e.json"))
    assert out["estimate"] == "held-out" and out["in_sample"] is False and out["notes"] == []
    assert out["fusion"]["n"] == len(records(env, "train"))
    val = records(env, "val")
    probs = np.stack([hand_probs(env.a, [r.path for r in val]),
                      hand_probs(env.b, [r.path for r in val])], axis=1)
    reference = create_ensembler(method).fit(probs, [r.label for r in val]).to_dict()
    saved = json.loads((tmp_path / "e.json").read_text())["ensembler"]
    assert saved.keys() == reference.keys()
    for key, value in reference.items():
        if isinstance(value, (list, float)):
            np.testing.assert_allclose(saved[key], value, atol=1e-3)
        else:
            assert saved[key] == value


def test_ensemble_table_names_run_folders_shows_weights_and_labels_its_figures(
        env, invoke, tmp_path, monkeypatch):
    import shutil

    from covidzoo import plots

    runs = []
    for name, checkpoint in (("run-a", env.a), ("run-b", env.b)):
        (tmp_path / name).mkdir()
        runs.append(shutil.copy(checkpoint, tmp_path / name / "best.safetensors"))
    drawn = {}

    def capture(path, curves, **kwargs):
        drawn.update(labels=[c.label for c in curves], title=kwargs.get("title"))
        return Path(path)

    monkeypatch.setattr(plots, "save_roc_png", capture)
    result = invoke("ensemble", *map(str, runs), "--data", str(env.data), "--method",
                    "weighted", "--device", "cpu", "--roc", str(tmp_path / "roc.png"))
    assert result.exit_code == 0, result.output
    text = result.output
    assert "run-a *" in text and "run-b *" in text and "best.safetensors" not in text
    assert "weighted fusion" in text and "(cross-fitted) *" in text  # the row may wrap
    assert "cross-fitted over 3 folds" in text and "IN-SAMPLE" not in text
    assert "weight" in text and "per fold" in text
    assert "note: selection-biased (*)" in text
    assert drawn["labels"] == ["run-a", "run-b", "weighted fusion (cross-fitted)"]
    out = run_json(invoke, "ensemble", *map(str, runs), "--data", str(env.data), "--method",
                   "weighted", "--split", "train")
    assert [m["name"] for m in out["members"]] == ["run-a", "run-b"]
    assert [m["weight"] for m in out["members"]] == out["weights"] == \
        out["ensembler"]["weights"]
    assert out["estimate"] == "held-out" and out["notes"] == []


def test_members_can_mix_2d_and_3d_models(env, invoke, tmp_path):
    with tiny2d_registered():
        out = run_json(invoke, "ensemble", str(env.a), str(env.c2d), "--data", str(env.data),
                       "--save", str(tmp_path / "mix.json"))
        assert len(out["members"]) == 2 and out["fusion"]["n"] == 6
        scan = str(records(env, "val")[0].path)
        predicted = run_json(invoke, "predict", str(tmp_path / "mix.json"), scan)
    members = predicted["predictions"][0]["member_probabilities"]
    assert predicted["predictions"][0]["probability"] == pytest.approx(sum(members) / 2,
                                                                       abs=1e-12)


# --- predict -----------------------------------------------------------------------------------


def test_predict_dicom_folder_jpg_folder_and_npy(env, invoke, tmp_path):
    dicom = synthesize(tmp_path / "dicom", n=2, seed=5, fmt="dicom", shape=(10, 36, 36))
    dicom_scan = next(dicom.glob("*/*/scan_*"))
    jpg_scan = records(env, "val")[0].path
    npy = tmp_path / "vol.npy"
    np.save(npy, np.random.default_rng(0).normal(-600, 300, (9, 30, 30)).astype(np.float32))
    scans = [dicom_scan, jpg_scan, npy]
    out = run_json(invoke, "predict", str(env.a), *map(str, scans))
    got = [p["probability"] for p in out["predictions"]]
    np.testing.assert_allclose(got, hand_probs(env.a, scans), atol=1e-5)
    assert out["threshold"] == {"value": 0.42, "source": "checkpoint",
                                "note": "chosen on validation data"}
    table = invoke("predict", str(env.a), str(npy), "--device", "cpu")
    assert table.exit_code == 0 and "vol.npy" in table.stdout


def test_predict_without_threshold_uses_half_and_says_so(env, invoke):
    scan = str(records(env, "val")[0].path)
    out = run_json(invoke, "predict", str(env.b), scan)
    assert out["threshold"]["value"] == 0.5 and out["threshold"]["source"] == "default"
    table = invoke("predict", str(env.b), scan, "--device", "cpu")
    assert "stores no threshold: 0.5 used" in table.stderr


def test_unreadable_scans_are_reported_and_the_rest_continue(env, invoke, runner, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "slice.jpg").write_bytes(b"not a jpeg")
    good = str(records(env, "val")[0].path)
    out = run_json(invoke, "predict", str(env.a), good, str(broken))
    assert [p["scan"] for p in out["predictions"]] == [good]
    assert out["failed"][0]["source"] == str(broken)
    table = invoke("predict", str(env.a), good, str(broken), "--device", "cpu")
    assert table.exit_code == 0 and "1 scan(s) failed" in table.stderr
    assert "every scan failed" in fails(runner, "predict", str(env.a), str(broken))

    manifest = tmp_path / "m.csv"
    lines = [f"{r.path},{r.label},val" for r in records(env, "val")] + [f"{broken},1,val"]
    manifest.write_text("path,label,split\n" + "\n".join(lines) + "\n")
    evaluated = run_json(invoke, "evaluate", str(env.a), "--manifest", str(manifest))
    assert evaluated["metrics"]["n"] == 6
    assert [f["source"] for f in evaluated["failed"]] == [str(broken.resolve())]


def test_data_with_one_class_reports_what_is_defined(env, invoke, runner, tmp_path):
    manifest = tmp_path / "covid.csv"
    covid = [r for r in records(env, "val") if r.label == 1]
    manifest.write_text("path,label,split\n" + "".join(f"{r.path},covid,val\n" for r in covid))
    out = run_json(invoke, "evaluate", str(env.a), "--manifest", str(manifest),
                   "--roc", str(tmp_path / "roc.png"))
    metrics = out["metrics"]
    assert metrics["auc"] is None and "one class only" in metrics["undefined"]["auc"]
    assert metrics["specificity"] is None and metrics["sensitivity"] is not None
    assert not (tmp_path / "roc.png").exists() and "no ROC plot" in out["notes"][0]
    table = invoke("evaluate", str(env.a), "--manifest", str(manifest), "--device", "cpu")
    assert table.exit_code == 0 and "one class only" in table.stdout
    line = fails(runner, "ensemble", str(env.a), str(env.b), "--manifest", str(manifest))
    assert "one class" in line


# --- inference machinery -----------------------------------------------------------------------


def test_members_are_folded_and_fold_changes_nothing(env):
    folded = inference.load_member(env.a)
    plain = inference.load_member(env.a, fold=False)
    assert count_batchnorms(folded.model) == 0 < count_batchnorms(plain.model)
    assert not folded.model.training and not plain.model.training
    batch = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 1, 8, 32, 32),
                                                             dtype=np.uint8))
    torch.testing.assert_close(folded.probs(batch), plain.probs(batch), atol=1e-5, rtol=0)


def test_two_output_models_read_as_softmax_and_do_not_mix(env, runner, tmp_path):
    two = make_checkpoint(tmp_path / "two.safetensors", (8, 32, 32), seed=4,
                          model_args={**TINY, "num_classes": 2})
    member = inference.load_member(two)
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    torch.testing.assert_close(inference.logits_to_probs(logits, 2),
                               torch.softmax(logits, 1)[:, 1])
    assert member.num_classes == 2
    line = fails(runner, "ensemble", str(env.a), str(two), "--data", str(env.data))
    assert "different class definitions" in line


# --- bad input ---------------------------------------------------------------------------------


def test_a_pickle_is_refused_and_never_unpickled(env, runner, tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, path)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr("pickle.load", no_unpickling)
    monkeypatch.setattr("pickle.loads", no_unpickling)
    assert "pickle" in fails(runner, "evaluate", str(path), "--data", str(env.data))
    assert "pickle" in fails(runner, "predict", str(path), str(env.data))


def test_not_a_covidzoo_checkpoint(env, runner, tmp_path):
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    assert "not a covidzoo checkpoint" in fails(runner, "evaluate", str(plain))
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, I am not a model at all")
    assert "not a safetensors file" in fails(runner, "predict", str(text), str(env.data))


def test_ensemble_file_naming_missing_checkpoints(env, runner, tmp_path):
    ens = tmp_path / "e.json"
    ens.write_text(json.dumps({"format": 1, "members": ["a.safetensors", "gone.safetensors"],
                               "ensembler": {"method": "mean", "n_models": 2}, "threshold": 0.5}))
    (tmp_path / "a.safetensors").write_bytes(env.a.read_bytes())
    line = fails(runner, "predict", str(ens), str(env.data))
    assert "gone.safetensors" in line and "a.safetensors," not in line
    ens.write_text("{not json")
    assert "not an ensemble JSON file" in fails(runner, "evaluate", str(ens))


def test_an_ensemble_file_is_read_once(env, tmp_path, monkeypatch):
    """Threshold, ensembler and temperature come from one read of the file: one rewritten in
    between (calibrate --in-place) can never load half old, half new."""
    ens = tmp_path / "e.json"
    inference.write_ensemble_file(ens, [env.a], create_ensembler("mean").fit(np.ones((2, 1))),
                                  0.5)
    ens.write_text(json.dumps({**json.loads(ens.read_text()), "temperature": 2.0}))
    reads = []
    original = inference._read_json
    monkeypatch.setattr(inference, "_read_json", lambda path: reads.append(path) or original(path))
    predictor = inference.load_predictor(ens)
    assert reads == [ens]
    assert (predictor.threshold, predictor.temperature) == (0.5, 2.0)


def test_ensemble_bad_members_and_methods(env, runner, tmp_path):
    ens = tmp_path / "e.json"
    inference.write_ensemble_file(ens, [env.a], create_ensembler("mean").fit(np.ones((2, 1))),
                                  0.5)
    assert "must be checkpoints" in fails(runner, "ensemble", str(ens))
    assert "median-of-means" in fails(runner, "ensemble", str(env.a), "--method",
                                      "median-of-means")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU-only host")
def test_cuda_without_a_gpu_is_bad_input(env, runner):
    from covidzoo.cli import cli

    result = runner.invoke(cli, ["predict", str(env.a), str(env.data), "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA device" in result.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predict_on_cuda_matches_cpu(env):
    scans = [r.path for r in records(env, "val")[:2]]
    cpu = inference.predict_paths(inference.load_predictor(env.a, "cpu", "fp32"), scans)
    for precision, atol in (("fp32", 1e-4), ("bf16", 3e-2)):
        gpu = inference.predict_paths(inference.load_predictor(env.a, "cuda", precision), scans)
        np.testing.assert_allclose(gpu.probs, cpu.probs, atol=atol)


def test_a_safetensors_header_length_like_pickle_magic_is_still_read(env, tmp_path):
    """Regression: the header length's low byte can be 0x80, the first byte of a pickle."""
    from safetensors.torch import save_file

    from covidzoo.checkpoint import METADATA_KEY, read_spec

    spec = json.dumps(ModelSpec("regnet3d", threshold=0.25).to_dict())
    path = tmp_path / "x.safetensors"
    for pad in range(0, 400):
        save_file({"w": torch.zeros(2)}, str(path), metadata={METADATA_KEY: spec, "p": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert read_spec(path).threshold == 0.25


# --- issue 21: a prepared cache, sizes, digits, progress ----------------------------------------


def test_evaluate_reads_a_prepared_cache_made_as_the_model_records(env, invoke, runner,
                                                                    tmp_path):
    cache = tmp_path / "cache"
    prepared = invoke("data", "prepare", str(env.data), "--out", str(cache), "--size",
                      "8,32,32", "--no-progress")
    assert prepared.exit_code == 0, prepared.output
    from_cache = run_json(invoke, "evaluate", str(env.a), "--cache", str(cache))
    from_data = run_json(invoke, "evaluate", str(env.a), "--data", str(env.data))
    assert from_cache["data"] == str(cache) and from_cache["split"] == "val"
    assert from_cache["metrics"] == from_data["metrics"]
    # b was trained on 16x32x32 scans: one line names the difference.
    line = fails(runner, "evaluate", str(env.b), "--cache", str(cache))
    assert line == (f"Error: --cache {cache}: its scans were prepared with size 8,32,32, "
                    "b.safetensors with size 16,32,32; prepare a cache with the model's "
                    "preprocessing, or give --data or --manifest")
    assert "give one of --data, --cache" in fails(runner, "evaluate", str(env.a), "--cache",
                                                  str(cache), "--data", str(env.data))


def test_a_model_too_small_for_its_recorded_scans_is_refused_in_one_line(env, runner, tmp_path):
    small = make_checkpoint(tmp_path / "small.safetensors", (4, 4, 4), seed=0)
    for command in (("evaluate", str(small), "--data", str(env.data)),
                    ("predict", str(small), str(records(env, "val")[0].path))):
        line = fails(runner, *command)
        assert line.startswith(f"Error: {small}: scans of 4x4x4 are too small for 'regnet3d'")


def test_predict_shows_enough_digits_to_tell_probability_from_threshold(env, invoke, tmp_path):
    """An untrained model's probabilities sit near its threshold: a row labelled non-covid must
    not show the same number as the threshold."""
    scan = str(records(env, "val")[0].path)
    probability = run_json(invoke, "predict", str(env.a), scan)["predictions"][0]["probability"]
    near = make_checkpoint(tmp_path / "near.safetensors", (8, 32, 32), seed=0,
                           threshold=probability + 3e-6)  # env.a's model, threshold just above
    out = run_json(invoke, "predict", str(near), scan)
    assert out["predictions"][0]["label"] == "non-covid"
    assert out["predictions"][0]["threshold"] == probability + 3e-6  # full precision in JSON
    table = invoke("predict", str(near), scan, "--device", "cpu").stdout
    row = next(line for line in table.splitlines() if "non-covid" in line)
    shown_p, shown_t = [cell.strip() for cell in row.split("│")[2:5:2]]
    assert shown_p != shown_t and float(shown_p) < float(shown_t)
    assert abs(float(shown_p) - probability) < 1e-5


def test_inference_shows_progress_where_a_person_watches(env, monkeypatch):
    import io

    from rich.console import Console

    from covidzoo import progress
    from covidzoo.evaluation import evaluate, predict

    screen = io.StringIO()
    monkeypatch.setattr(progress, "shows", lambda: True)
    monkeypatch.setattr(progress, "_console",
                        lambda: Console(file=screen, force_terminal=True, width=160))
    evaluate(env.a, data=env.data, device="cpu", progress=True)
    assert "scoring" in screen.getvalue() and "6/6" in screen.getvalue()
    scans = [r.path for r in records(env, "val")]
    predict(env.a, scans, device="cpu", progress=True)
    assert "predicting" in screen.getvalue() and f"{len(scans)}/{len(scans)}" in screen.getvalue()
    screen.truncate(0)
    predict(env.a, scans, device="cpu")  # progress off: nothing drawn
    assert screen.getvalue().strip("\x00") == ""
