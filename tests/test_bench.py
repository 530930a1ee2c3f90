"""`covidzoo bench` and `covidzoo.bench`: a tiny CPU smoke run, the result schema, OOM decay,
isolation, end-to-end from a cache, bad input, and the `auto` table generator."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from covidzoo import bench, hookimpl, plugins, runtime
from covidzoo.bench import BenchConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ("--model-arg", "depths=[1,1]", "--model-arg", "widths=[8,16]", "--model-arg",
        "stem_width=8")
TINY_ARGS = {"depths": [1, 1], "widths": [8, 16], "stem_width": 8}
FAST = ("--batch-size", "2", "--warmup", "1", "--iters", "2", "--threads", "1")
CONFIG_KEYS = {
    "model", "mode", "precision", "resolved_precision", "amp_dtype", "model_dtype",
    "data_dtype", "channels_last", "compile_mode", "fold_bn", "cudnn_benchmark", "batch_size",
    "input_size", "default_input_size", "spatial_dims", "model_args", "aggregator_args",
    "param_count", "warmup",
    "iters", "device", "device_name", "device_class", "cpu_count", "threads", "torch", "cuda",
    "cudnn", "python", "covidzoo", "peak_memory_mb", "speedup_vs_fp32",
}


def tiny(**kwargs) -> BenchConfig:
    base = dict(model="regnet3d", input_size=(8, 16, 16), batch_size=2, warmup=1, iters=2,
                threads=1, model_args=TINY_ARGS)
    return BenchConfig(**{**base, **kwargs})


def test_cli_smoke_fp32_bf16_json_schema(invoke, tmp_path):
    out = tmp_path / "bench.json"
    result = invoke("bench", "regnet3d", "--input-size", "16,32,32", "--precision", "fp32,bf16",
                    *TINY, *FAST, "--json", str(out), "--csv", str(tmp_path / "bench.csv"))
    assert result.exit_code == 0, result.output
    assert "regnet3d, scans of 1x16x32x32" in result.output and "vs fp32" in result.output
    data = json.loads(out.read_text())
    assert data["kind"] == bench.RESULTS_KIND
    results = data["results"]
    assert [(r["mode"], r["precision"]) for r in results] == [
        ("infer", "fp32"), ("infer", "bf16"), ("train", "fp32"), ("train", "bf16")]
    for r in results:
        mode = r["mode"]
        figures = {f"{mode}_{k}" for k in
                   ("samples_per_sec", "step_time", "batch_size", "warmup_s")}
        assert set(r) == CONFIG_KEYS | figures, set(r) ^ (CONFIG_KEYS | figures)
        assert r[f"{mode}_samples_per_sec"] > 0 and r[f"{mode}_batch_size"] == 2
        assert r["input_size"] == [1, 16, 32, 32] and r["device"] == "cpu"
        assert r["model_args"] == TINY_ARGS and r["threads"] == 1
        assert r["fold_bn"] is (mode == "infer")
    fp32, bf16 = results[0], results[1]
    assert fp32["speedup_vs_fp32"] == 1.0
    assert bf16["speedup_vs_fp32"] == pytest.approx(
        bf16["infer_samples_per_sec"] / fp32["infer_samples_per_sec"], rel=1e-2)
    assert (bf16["amp_dtype"], bf16["model_dtype"], bf16["data_dtype"]) == (
        "bfloat16", "float32", "bfloat16")
    assert results[3]["data_dtype"] == "float32"  # training input stays float32
    header = (tmp_path / "bench.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["model", "mode", "precision"] and "train_samples_per_sec" in header


def test_auto_and_baseline_rows(invoke):
    result = invoke("bench", "regnet3d", "--mode", "train", "--precision", "auto",
                    "--input-size", "16,32,32", *TINY, *FAST, "--json", "-")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    # The fp32 eager baseline comes first; auto on the CPU is fp32.
    assert [r["precision"] for r in rows] == ["fp32", "auto"]
    assert rows[1]["resolved_precision"] == "fp32" and rows[1]["compile_mode"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (("nope*",), "no backbone matches nope*"),
        (("regnet3d", "--precision", "fp16", "--device", "cpu"), "fp16 needs a CUDA device"),
        (("regnet3d", "--input-size", "8,8,8", "--device", "cpu"), "too small for 'regnet3d'"),
        (("regnet3d", "--e2e"), "--e2e needs --cache"),
        (("regnet3d", "--precision", "fp8"), "unknown value 'fp8'"),
        (("regnet3d", "--device", "cpu", "--compile", "fastest"), "unknown compile mode"),
        (("regnet3d", "--device", "cpu", "--model-arg", "depths"), "takes KEY=VALUE"),
        (("regnet3d", "--device", "cpu", "--model-arg", "bogus=1"), "unknown option bogus"),
        (("regnet3d", "--input-size", "1,2,3,4"), "--input-size takes D,H,W"),
        (("regnet3d", "--device", "tpu0"), "--device tpu0: choose cuda or cpu"),
        (("regnet3d", "--device", "cpu", "--iters", "0"), "--iters must be at least 1"),
        (("resdense2d", "--input-size", "16,16", "--device", "cpu"), "too small"),
        (("regnet3d", "--device", "cpu", "--aggregator-arg", "k=2"), "aggregator 'volume': "),
        (("regnet3d", "--device", "cpu", "--backbones", "a,b"), "an option of resdense2d"),
        (("regnet3d", "--device", "cpu", "--depths", "1,x"), "--depths: 'x' is not an integer"),
    ],
)
def test_bad_input_exits_2_with_one_line(invoke, args, message):
    result = invoke("bench", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1


def test_e2e_without_a_prepared_cache(invoke, tmp_path):
    result = invoke("bench", "regnet3d", "--e2e", "--cache", str(tmp_path), "--device", "cpu")
    assert result.exit_code == 2 and "not a prepared cache" in result.output


def test_input_size_check_allows_the_reduction():
    """For a network reducing 8x (stem + two stages), 8x16x16 and the thin 4x16x16 pass (the
    scan reaches the reduction in some dimension: the rule of `covidzoo train` too); 4x4x4, all
    less than one cell of the last feature map, does not."""
    bench.check(tiny())
    bench.check(tiny(input_size=(4, 16, 16)))
    with pytest.raises(bench.BadInputError, match="reduces 8x8x8"):
        bench.check(tiny(input_size=(4, 4, 4)))


class _OomAbove2(torch.nn.Module):
    """Runs out of memory for batches above 2, as a GPU would."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 4, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(4, 1)
        self.num_classes = 1

    def forward_features(self, x):
        return self.conv(x)

    def forward(self, x):
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.head(self.conv(x).mean((2, 3, 4)))


class _OomPlugin:
    @hookimpl
    def register_backbones(self, register):
        register("oom3d", _OomAbove2, spatial_dims=3, input_size=(8, 8, 8))


def test_out_of_memory_decays_the_batch_and_records_the_fit():
    pm = plugins.get_plugin_manager()
    pm.register(_OomPlugin(), name="oom-test")
    try:
        for mode in ("infer", "train"):
            r = bench.run_config(BenchConfig("oom3d", mode=mode, batch_size=8, warmup=1,
                                             iters=1, threads=1))
            # timm's decay: 8 -> 6 -> 4 -> 3 -> 2
            assert r["batch_size"] == 8 and r[f"{mode}_batch_size"] == 2
    finally:
        pm.unregister(name="oom-test")


def test_isolated_worker_gives_the_same_schema():
    cfg = tiny(mode="infer")
    r = bench.run_isolated(cfg, timeout=120)
    assert "error" not in r, r
    assert r["infer_batch_size"] == 2 and r["input_size"] == [1, 8, 16, 16]
    assert bench.BenchConfig.from_dict(cfg.to_dict()) == cfg


def test_failed_configuration_is_a_result_not_a_crash(monkeypatch):
    def boom(cfg):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR\nmore")

    monkeypatch.setattr(bench, "run_config", boom)
    [r] = bench.run_benchmarks([tiny()])
    assert r["error"] == "RuntimeError: cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"
    assert r["speedup_vs_fp32"] is None


def test_end_to_end_from_a_cache(tmp_path):
    from covidzoo.data import PreprocessConfig
    from covidzoo.data.cache import save_volume, volume_file, write_index

    rng = np.random.default_rng(0)
    entries = []
    (tmp_path / "volumes").mkdir()
    for i in range(4):
        stored = save_volume(tmp_path / volume_file(str(i)),
                             rng.integers(0, 255, (8, 16, 16), dtype=np.uint8))
        entries.append({"source": str(i), "file": volume_file(str(i)), "label": i % 2,
                        "split": "train", "warnings": [], **stored,
                        "fingerprint": {"files": 1, "bytes": 0, "mtime_ns": 0}})
    write_index(tmp_path, PreprocessConfig(size=(8, 16, 16)), entries)
    r = bench.run_config(tiny(mode="train", input_size=None, e2e_cache=str(tmp_path),
                              workers=0, iters=3))
    assert r["input_size"] == [1, 8, 16, 16] and r["e2e_batch_size"] == 2
    assert r["e2e_samples_per_sec"] > 0
    assert r["e2e_ratio"] == pytest.approx(r["e2e_step_time"] / r["train_step_time"], rel=1e-2)
    with pytest.raises(bench.BadInputError, match="differs from the cached scans"):
        bench.check(tiny(mode="train", input_size=(8, 32, 32), e2e_cache=str(tmp_path)))


def test_decaying_batch_gives_up_at_one():
    def always_oom(batch):
        raise torch.OutOfMemoryError("out of memory")

    with pytest.raises(bench.CovidzooError, match="even at batch size 1"):
        bench.decaying_batch(always_oom, 4, torch.device("cpu"))


# --- the auto table --------------------------------------------------------------------------


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "make_auto_table", ROOT / "benchmarks" / "make_auto_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_auto_table"] = module
    spec.loader.exec_module(module)
    return module


def _result(mode, precision, rate, speedup, cl=False, compile_mode=None, **extra):
    return {
        "model": "regnet3d", "mode": mode, "precision": precision,
        "resolved_precision": "fp16" if precision == "auto" else precision,
        "channels_last": cl, "compile_mode": compile_mode, "device_class": "h100",
        "device_name": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "model_args": {},
        "input_size": [1, 64, 224, 224], "default_input_size": True,
        f"{mode}_samples_per_sec": rate, f"{mode}_batch_size": 4, "speedup_vs_fp32": speedup,
        **extra,
    }


def test_make_auto_table_picks_the_fastest_faster_than_fp32(tmp_path):
    gen = _load_generator()
    results = tmp_path / "results"
    results.mkdir()
    (results / "data_cpu.json").write_text(json.dumps({"dicom_covidzoo_s": 0.3}))
    rows = [
        _result("train", "fp32", 120.0, 1.0),
        _result("train", "bf16", 114.0, 0.95, cl=True),
        _result("train", "fp16", 300.0, 2.5, cl=True, compile_mode="reduce-overhead"),
        _result("train", "fp16", 900.0, 7.5, cl=True, model_args={"depths": [1, 1]}),
        _result("train", "fp16", 950.0, 8.0, cl=True, error="boom"),
        _result("train", "fp16", 999.0, 9.0, cl=True, default_input_size=False),
        _result("train", "auto", 400.0, 3.3, cl=True),
        _result("infer", "fp32", 900.0, 1.0),
        _result("infer", "bf16", 600.0, 0.67),  # nothing beats fp32: no entry
    ]
    (results / "bench_h100.json").write_text(json.dumps({"kind": "covidzoo-bench",
                                                         "results": rows}))
    out = tmp_path / "_auto_table.py"
    gen.main(["--results", str(results), "--out", str(out)])
    namespace: dict = {}
    exec(out.read_text(), namespace)
    assert namespace["AUTO_TABLE"] == {
        ("h100", "regnet3d", "train"): ("fp16", True, "reduce-overhead")}
    assert out.read_text().startswith('"""GENERATED by benchmarks/make_auto_table.py')
    assert "2.50x fp32" in out.read_text()


def test_generated_table_is_what_the_committed_results_give(tmp_path):
    gen = _load_generator()
    out = tmp_path / "_auto_table.py"
    gen.main(["--out", str(out)])
    assert out.read_text() == (ROOT / "covidzoo" / "_auto_table.py").read_text()


def test_resolve_precision_auto_uses_the_table(monkeypatch):
    monkeypatch.setattr(runtime, "device_class", lambda device: "h100")
    monkeypatch.setitem(runtime.AUTO_TABLE, ("h100", "regnet3d", "train"),
                        ("fp16", True, "reduce-overhead"))
    p = runtime.resolve_precision("auto", "cuda", "regnet3d", "train")
    assert p == runtime.Precision("fp16", True, "reduce-overhead") and p.use_scaler
    assert runtime.resolve_precision("auto", "cuda", "regnet3d", "train", channels_last=False) == (
        runtime.Precision("fp16", False, "reduce-overhead"))
    assert runtime.resolve_precision("auto", "cuda", "not-measured", "infer") == (
        runtime.Precision("fp32"))
    assert runtime.resolve_precision("fp16", "cuda").compile_mode is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_channels_last_records_peak_memory():
    r = bench.run_config(tiny(device="cuda", precision="fp16", channels_last=True,
                              mode="train"))
    assert r["peak_memory_mb"] > 0 and r["train_samples_per_sec"] > 0


def test_gpu_driver_lists_its_groups_and_rejects_unknown_ones(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import run_gpu

    run_gpu.main(["--list"])
    listed = capsys.readouterr().out
    assert all(name in listed for name in (*run_gpu.CORE, "resdense2d-compile",
                                           "auto-regnet3d-infer"))
    with pytest.raises(SystemExit, match="unknown group"):
        run_gpu.main(["regnet3d-everything"])
    [fp32, auto] = run_gpu.configs(run_gpu.AUTO_GROUPS["auto-regnet3d-train-small"], "cuda")
    assert (fp32.precision, auto.precision, auto.batch_size, auto.input_size) == (
        "fp32", "auto", 4, (64, 224, 224))


def test_declared_backbone_options_reach_the_model(invoke):
    """regnet3d's own flags (declared at registration) work in bench as in train."""
    result = invoke("bench", "regnet3d", "--depths", "1,1", "--widths", "8,16", "--stem-width",
                    "8", "--input-size", "16,32,32", "--mode", "infer", "--precision", "fp32",
                    "--no-baseline", "--iters", "1", "--warmup", "0", "--device", "cpu",
                    "--json", "-")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["model_args"] == {"depths": [1, 1], "widths": [8, 16], "stem_width": 8}
