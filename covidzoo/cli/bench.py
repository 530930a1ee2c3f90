"""`covidzoo bench`: samples per second of the backbones, per mode, precision and option set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ..errors import BadInputError
from .options import (
    BackboneCommand,
    backbone_kwargs,
    device_option,
    parse_key_values,
    parse_model_args,
    parse_size,
    print_json,
    print_table,
    threads_option,
)

ALL_PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def parse_list(option: str, text: str, choices: Sequence[str]) -> list[str]:
    """`"fp32,bf16"` -> `["fp32", "bf16"]`, each checked against `choices`."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    for value in values:
        if value not in choices:
            raise BadInputError(f"{option}: unknown value '{value}'; choose from "
                                f"{', '.join(choices)}")
    if not values:
        raise BadInputError(f"{option}: give at least one of {', '.join(choices)}")
    return list(dict.fromkeys(values))


def _options(r: dict[str, Any]) -> str:
    parts = []
    if r.get("channels_last"):
        parts.append("channels-last")
    if r.get("compile_mode"):
        parts.append(f"compile {r['compile_mode']}")
    if r.get("fold_bn"):
        parts.append("fold-bn")
    if r.get("e2e_cache"):
        parts.append("e2e")
    return ", ".join(parts) or "eager"


def _rate(r: dict[str, Any], prefix: str) -> str:
    rate = r.get(f"{prefix}_samples_per_sec")
    if rate is None:
        return ""
    slices = r.get(f"{prefix}_slices_per_sec")
    return f"{rate:,.1f}" + (f" ({slices:,.0f} slices/s)" if slices is not None else "")


def rows(results: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """One table row per result (an end-to-end result adds a row for its loader-fed steps)."""
    out = []
    for r in results:
        mode = r["mode"]
        precision = r["precision"]
        if precision == "auto" and r.get("resolved_precision"):
            precision = f"auto -> {r['resolved_precision']}"
        if r.get("error"):
            out.append([mode, precision, _options(r), r.get("batch_size") or "", "", "", "", "",
                        f"error: {r['error']}"])
            continue
        peak = r.get("peak_memory_mb")
        speedup = r.get("speedup_vs_fp32")
        out.append([
            mode, precision, _options(r), r[f"{mode}_batch_size"], _rate(r, mode),
            f"{r[f'{mode}_step_time']:.1f}", "" if peak is None else f"{peak:,.0f}",
            "" if speedup is None else f"{speedup:.2f}x", "",
        ])
        if r.get("e2e_cache"):
            out.append(["e2e", precision, f"{r['e2e_workers']} workers", r["train_batch_size"],
                        _rate(r, "e2e"), f"{r['e2e_step_time']:.1f}", "", "",
                        f"{r['e2e_ratio']:.2f}x the model step"])
    return out


@click.command("bench", cls=BackboneCommand)
@click.argument("patterns", nargs=-1)
@click.option("--mode", help="Comma-separated: infer, train.  [default: infer,train; train "
              "with --e2e]")
@click.option("--precision", "precision_text",
              help="Comma-separated: fp32, bf16, fp16, auto.  [default: all valid on the device]")
@click.option("--channels-last/--no-channels-last", default=False, show_default=True,
              help="channels_last(_3d) memory format for the model and its input.")
@click.option("--compile", "--compile-mode", "compile_mode", is_flag=False,
              flag_value="default", default=None, metavar="[MODE]",
              help="torch.compile the model: default, reduce-overhead (CUDA graphs), "
              "max-autotune, max-autotune-no-cudagraphs. Alone: default.")
@click.option("--fold-bn/--no-fold-bn", default=True, show_default=True,
              help="Fold BatchNorm into the convolutions for inference.")
@click.option("--cudnn-benchmark/--no-cudnn-benchmark", default=True, show_default=True,
              help="Let cuDNN autotune its convolution algorithms.")
@click.option("--batch-size", type=int, help="Scans per step.  [default: 32 infer, 4 train]")
@click.option("--input-size", metavar="D,H,W", help="Scan size (H,W for a 2D backbone: 64 "
              "slices).  [default: the backbone's input_size]")
@device_option
@click.option("--warmup", default=5, show_default=True, help="Untimed steps first.")
@click.option("--iters", default=20, show_default=True, help="Timed steps.")
@threads_option
@click.option("--model-arg", "model_arg", multiple=True, metavar="KEY=VALUE",
              help="Backbone keyword argument, value as JSON (repeatable): depths=[1,1].")
@click.option("--aggregator-arg", "aggregator_arg", multiple=True, metavar="KEY=VALUE",
              help="Keyword of the default aggregator's factory (repeatable, JSON values).")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Add an fp32 eager run to each model and mode, the base of speed-up.")
@click.option("--isolate/--no-isolate", default=None,
              help="One process per configuration.  [default: on with CUDA]")
@click.option("--e2e", is_flag=True, help="Also time training steps fed from --cache through "
              "the data loader and GPU augmentation.")
@click.option("--cache", type=click.Path(path_type=Path), help="A prepared cache (--e2e).")
@click.option("--workers", type=click.IntRange(min=0),
              help="Data-loader workers (--e2e).  [default: as covidzoo train: up to 8 on CUDA]")
@click.option("--json", "json_path", metavar="FILE", help="Write the results as JSON ('-': "
              "stdout, no table).")
@click.option("--csv", "csv_path", metavar="FILE", help="Write the results as CSV.")
def bench(patterns: tuple[str, ...], mode: str | None, precision_text: str | None,
          channels_last: bool, compile_mode: str | None, fold_bn: bool, cudnn_benchmark: bool,
          batch_size: int | None, input_size: str | None, device: str | None, warmup: int,
          iters: int, model_arg: tuple[str, ...],
          aggregator_arg: tuple[str, ...], baseline: bool, isolate: bool | None, e2e: bool,
          cache: Path | None, workers: int | None, json_path: str | None, csv_path: str | None,
          **options: Any) -> None:
    """Measure samples (scans) per second of the backbones matching PATTERNS (fnmatch; default:
    every backbone) with their default aggregator, for inference and training steps.

    Each precision runs with the same options (--channels-last, --compile); `auto` runs what
    `--precision auto` would pick in train/evaluate. Speed-up is against the fp32 eager run of
    the same model and mode. Out of memory, the batch size decays and the table shows the batch
    that fit.
    """
    import torch

    from ..bench import BenchConfig, run_benchmarks, write_csv, write_json
    from ..factory import get_component, list_models
    from ..runtime import resolve_device, valid_precisions

    if e2e and cache is None:
        raise BadInputError("--e2e needs --cache DIR, a cache built by 'covidzoo data prepare'")
    if cache is not None and not e2e:
        raise BadInputError("--cache is for --e2e; add --e2e")
    modes = parse_list("--mode", mode or ("train" if e2e else "infer,train"), ("infer", "train"))
    target = resolve_device(device)
    device = str(target)
    valid = (*valid_precisions(target), "auto")
    precisions = parse_list("--precision", precision_text or ",".join(valid), ALL_PRECISIONS)
    names = list_models(list(patterns) or "*", kind="backbone")
    if not names:
        raise BadInputError(f"no backbone matches {' '.join(patterns)}; see 'covidzoo models'")
    size = None if input_size is None else parse_size("--input-size", input_size, (3, 2))
    common = dict(
        fold_bn=fold_bn, cudnn_benchmark=cudnn_benchmark, batch_size=batch_size,
        input_size=size, device=device, warmup=warmup, iters=iters,
        aggregator_args=parse_key_values("--aggregator-arg", aggregator_arg),
        e2e_cache=None if cache is None else str(cache), workers=workers,
        threads=torch.get_num_threads(),  # as --threads resolved it, for isolated runs too
    )
    configs = []
    for name in names:
        model_args = {**parse_model_args(model_arg),
                      **backbone_kwargs(get_component(name), options)}
        for m in modes:
            runs = [(p, channels_last, compile_mode) for p in precisions]
            if baseline:
                runs.insert(0, ("fp32", False, None))
            for p, cl, cm in dict.fromkeys(runs):
                configs.append(BenchConfig(name, mode=m, precision=p, channels_last=cl,
                                           compile_mode=cm, model_args=model_args, **common))
    quiet = json_path == "-"

    def progress(i: int, cfg: BenchConfig) -> None:
        if not quiet:
            click.echo(f"[{i + 1}/{len(configs)}] {cfg.model} {cfg.mode} {cfg.precision}", err=True)

    isolate = target.type == "cuda" if isolate is None else isolate
    results = run_benchmarks(configs, isolate=isolate, progress=progress)
    if json_path == "-":
        print_json(results)
    elif json_path:
        write_json(json_path, results)
    if csv_path:
        write_csv(csv_path, results)
    if quiet:
        return
    for name in names:
        mine = [r for r in results if r["model"] == name]
        first = next((r for r in mine if not r.get("error")), mine[0])
        size = "x".join(str(s) for s in first.get("input_size") or [])
        where = first.get("device_name") or device
        table = rows(mine)
        columns = ["mode", "precision", "options", "batch", "scans/s", "step ms", "peak MB",
                   "vs fp32", "note"]
        if not any(row[-1] for row in table):
            columns, table = columns[:-1], [row[:-1] for row in table]
        print_table(f"{name}, scans of {size}, {where}", columns, table)
