"""`covidzoo train BACKBONE`: train on a data folder, a manifest, a cache or the demo data.

`--recipe NAME` and `--config FILE` give the training configuration as a file
(`covidzoo.recipes`); the flags given on the command line override it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ..errors import BadInputError
from ..values import format_number
from . import options as opt


def _float_list(ctx: click.Context, param: click.Parameter, value: str | None
                ) -> tuple[float, ...] | None:
    """`1,2.5,1` -> (1.0, 2.5, 1.0); anything else is bad input naming the flag."""
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise BadInputError(f"--{param.name.replace('_', '-')} takes numbers separated by "
                            f"commas, got '{value}'") from None


# Where a parameter's value comes from when nobody gave it.
UNSET = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)


@click.command("train", cls=opt.BackboneCommand)
@click.argument("backbone", required=False)
@click.option("--recipe", metavar="NAME",
              help="A recipe shipped with covidzoo (see `covidzoo recipes`).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), metavar="FILE",
              help="A training configuration, .toml or .json (a run's config.json is one); it "
                   "overrides --recipe. Flags given override both.")
@click.option("--model-arg", "model_arg", multiple=True, metavar="KEY=VALUE",
              help="Any other keyword of the backbone's factory (repeatable, JSON values).")
@click.option("--aggregator", default="auto", show_default=True,
              help="How slices or volumes become one score per scan (see `covidzoo models`).")
@click.option("--aggregator-arg", "aggregator_arg", multiple=True, metavar="KEY=VALUE",
              help="Keyword of the aggregator's factory (repeatable, JSON values): k=4.")
@click.option("--data", type=click.Path(), help="Dataset folder (COV19-CT-DB layout).")
@click.option("--manifest", type=click.Path(), help="CSV of path,label[,split].")
@click.option("--cache", type=click.Path(), help="A cache made by `covidzoo data prepare`.")
@click.option("--size", help="Scan size D,H,W after preprocessing.")
@opt.preprocess_option
@click.option("--epochs", type=click.IntRange(min=1),
              help="Epochs (default 15 on the demo data, else 30).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3,
              show_default=True)
@click.option("--optimizer", default="adamw", show_default=True,
              help="Any registered optimizer: adam, adamw, sgd, rmsprop, novograd, ...")
@click.option("--optimizer-arg", "optimizer_arg", multiple=True, metavar="KEY=VALUE",
              help="Keyword of the optimizer's factory (repeatable, JSON values): momentum=0.8.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=1e-4, show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "step", "none"]), default="cosine",
              show_default=True)
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--pos-weight", type=click.FloatRange(min=0, min_open=True),
              help="Weight of the covid class in the loss (the 3D RegNet paper's loss weight).")
@click.option("--class-weights", metavar="W0,W1,...", callback=_float_list,
              help="One loss weight per class, in class order (see the summary's classes); "
                   "generalises --pos-weight.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              show_default=True, help="Move training targets towards uniform by this much.")
@opt.precision_option
@click.option("--channels-last/--no-channels-last", default=None,
              help="Channels-last memory format (default: what was measured fastest).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--augment/--no-augment", default=True, show_default=True)
@click.option("--mixup", type=click.FloatRange(min=0), metavar="ALPHA",
              help="Mixup: each scan blended with another of its batch, weight ~ "
                   "Beta(ALPHA, ALPHA), e.g. 0.4 (off by default).")
@click.option("--cutmix", type=click.FloatRange(min=0), metavar="ALPHA",
              help="CutMix: a box of another scan pasted in, its fraction ~ Beta(ALPHA, ALPHA), "
                   "e.g. 1.0 (off by default). With --mixup, each batch gets one at random.")
@click.option("--ema", type=click.FloatRange(0, 1, max_open=True), metavar="DECAY",
              help="Keep a moving average of the weights, e.g. 0.999; it is validated each "
                   "epoch, chooses best.safetensors and is saved as ema.safetensors.")
@click.option("--init", type=click.Path(), metavar="FILE",
              help="Initial weights from a local .safetensors (or .pth/.pt, read with "
                   "torch.load(weights_only=True)); prints what loaded.")
@click.option("--init-inflate", is_flag=True, default=False,
              help="--init: inflate 2D kernels into the 3D model's (I3D).")
@click.option("--init-key-map", metavar="NAME",
              help="--init: rename the file's keys first (timm-regnet: timm's RegNet names).")
@click.option("--freeze-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Staged fine-tuning: epochs with the backbones frozen.")
@click.option("--unfreeze-last", type=click.IntRange(min=0), default=0, show_default=True,
              help="Staged fine-tuning: layers of each backbone unfrozen afterwards.")
@click.option("--frozen-bn", type=click.Choice(["eval", "train"]), default="eval",
              show_default=True,
              help="Staged fine-tuning: BatchNorms of frozen layers keep their running "
                   "statistics (eval) or normalise with batch statistics and update them (train).")
@click.option("--val-split", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Fraction of scans held out for validation when the data has no val split.")
@click.option("--split-file", type=click.Path(), metavar="CSV",
              help="The train/val split to use (a run's split.csv: path,label,split,group), "
                   "instead of the data's own splits.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--out", type=click.Path(), help="Run folder (default runs/BACKBONE-TIME).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.safetensors "
              "(without --out: the latest BACKBONE run under runs/).")
@opt.device_option
@opt.workers_option
@opt.threads_option
@click.option("--patience", type=click.IntRange(min=1), help="Early stopping patience (epochs).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def train(backbone: str | None, recipe: str | None, config_file: Path | None,
          model_arg: tuple[str, ...], aggregator_arg: tuple[str, ...],
          optimizer_arg: tuple[str, ...], size: str | None, preprocess: tuple[str, ...],
          compile_: bool, as_json: bool, **options: Any) -> None:
    """Train BACKBONE; with no --data/--manifest/--cache, on the built-in demo data.

    BACKBONE may be left out when --recipe or --config names one. Settings come from the
    recipe, then the file, then the flags given on the command line, each overriding the
    ones before (see docs/training.md#recipes).

    Backbones add their own architecture options (regnet3d: --depths, --widths, ...; see
    `covidzoo models show BACKBONE`).
    """
    from ..runtime import is_main_process
    from ..train import train as run_training

    cfg = build_config(backbone, recipe, config_file, model_arg, aggregator_arg, optimizer_arg,
                       size, preprocess, compile_, options)
    summary = run_training(cfg, quiet=as_json)
    if is_main_process():  # under torchrun, the first process reports, once
        if as_json:
            opt.print_json(summary)
        else:
            _print_summary(summary)
    if summary["interrupted"]:  # saved what it could; the shell sees Ctrl-C's status
        from . import INTERRUPTED

        raise click.exceptions.Exit(INTERRUPTED)


def build_config(backbone: str | None, recipe: str | None, config_file: Path | None,
                 model_arg: tuple[str, ...], aggregator_arg: tuple[str, ...],
                 optimizer_arg: tuple[str, ...], size: str | None,
                 preprocess: tuple[str, ...], compile_: bool, options: dict[str, Any]) -> Any:
    """The `TrainConfig` of train's options (and `cv`'s, which are the same): the recipe, then
    the config file, then the flags given on the command line."""
    from ..factory import get_component
    from ..recipes import (
        NO_BACKBONE,
        field_types,
        merge,
        read_config,
        recipe_config,
        train_config,
    )

    files = merge(*([recipe_config(recipe)] if recipe else []),
                  *([read_config(config_file)] if config_file else []))
    backbone = backbone or files.get("backbone")
    if backbone is None:
        raise BadInputError(NO_BACKBONE)
    # Each flag's field and value: the flags' defaults are the bottom layer, the flags given
    # the top one.
    fields = set(field_types())
    flags = {
        "backbone": ("backbone", backbone),
        "model_arg": ("model_args", opt.parse_model_args(model_arg)),
        "aggregator_arg": ("aggregator_args",
                           opt.parse_key_values("--aggregator-arg", aggregator_arg)),
        "optimizer_arg": ("optimizer_args",
                          opt.parse_key_values("--optimizer-arg", optimizer_arg)),
        "size": ("size", None if size is None else opt.parse_size("--size", size)),
        "preprocess": ("preprocess", opt.parse_preprocess(preprocess)),
        "compile_": ("compile", compile_),
        **{name: (name, value) for name, value in options.items() if name in fields},
    }
    ctx = click.get_current_context()
    defaults: dict[str, Any] = {}
    given: dict[str, Any] = {}
    for name, (field, value) in flags.items():
        layer = defaults if ctx.get_parameter_source(name) in UNSET else given
        layer[field] = value
    declared = opt.backbone_kwargs(get_component(backbone), options)  # --depths, ...
    if declared:
        given["model_args"] = {**given.get("model_args", {}), **declared}
    return train_config(merge(defaults, files, given))


def _print_summary(summary: dict[str, Any]) -> None:
    what = "AUC" if len(summary.get("classes") or ()) <= 2 else "macro AUC (one vs rest)"
    click.echo(
        f"{summary['backbone']}: best {what} {format_number(summary['best_val_auc'])} at epoch "
        f"{summary['best_epoch']}, on the validation split ({summary['n_val']} scans; this split "
        "chose the epoch, so the figure is optimistic). "
        f"{summary['epochs_run']}/{summary['epochs']} epochs, scans "
        f"{'x'.join(map(str, summary['size']))}, {summary['precision']} on {summary['device']}, "
        f"{summary['train_time_s']:.0f} s -> {summary['out']}"
    )
