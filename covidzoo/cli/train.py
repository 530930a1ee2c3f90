"""`covidzoo train BACKBONE`: train on a data folder, a manifest, a cache or the demo data."""

from __future__ import annotations

from typing import Any

import click

from ..values import format_number
from . import options as opt


@click.command("train", cls=opt.BackboneCommand)
@click.argument("backbone")
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
@opt.precision_option
@click.option("--channels-last/--no-channels-last", default=None,
              help="Channels-last memory format (default: what was measured fastest).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--augment/--no-augment", default=True, show_default=True)
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
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--out", type=click.Path(), help="Run folder (default runs/BACKBONE-TIME).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.safetensors "
              "(without --out: the latest BACKBONE run under runs/).")
@opt.device_option
@opt.workers_option
@opt.threads_option
@click.option("--patience", type=click.IntRange(min=1), help="Early stopping patience (epochs).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def train(backbone: str, model_arg: tuple[str, ...], aggregator_arg: tuple[str, ...],
          optimizer_arg: tuple[str, ...], size: str | None, preprocess: tuple[str, ...],
          compile_: bool, as_json: bool, **options: Any) -> None:
    """Train BACKBONE; with no --data/--manifest/--cache, on the built-in demo data.

    Backbones add their own architecture options (regnet3d: --depths, --widths, ...; see
    `covidzoo models show BACKBONE`).
    """
    from ..factory import get_component
    from ..train import TrainConfig
    from ..train import train as run_training

    model_args = opt.parse_model_args(model_arg)
    model_args.update(opt.backbone_kwargs(get_component(backbone), options))
    train_keys = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(
        backbone=backbone,
        model_args=model_args,
        aggregator_args=opt.parse_key_values("--aggregator-arg", aggregator_arg),
        optimizer_args=opt.parse_key_values("--optimizer-arg", optimizer_arg),
        size=None if size is None else opt.parse_size("--size", size),
        preprocess=opt.parse_preprocess(preprocess),
        compile=compile_,
        **{k: v for k, v in options.items() if k in train_keys},
    )
    summary = run_training(cfg, quiet=as_json)
    if as_json:
        opt.print_json(summary)
    else:
        _print_summary(summary)
    if summary["interrupted"]:  # saved what it could; the shell sees Ctrl-C's status
        from . import INTERRUPTED

        raise click.exceptions.Exit(INTERRUPTED)


def _print_summary(summary: dict[str, Any]) -> None:
    click.echo(
        f"{summary['backbone']}: best AUC {format_number(summary['best_val_auc'])} at epoch "
        f"{summary['best_epoch']}, on the validation split ({summary['n_val']} scans; this split "
        "chose the epoch, so the figure is optimistic). "
        f"{summary['epochs_run']}/{summary['epochs']} epochs, scans "
        f"{'x'.join(map(str, summary['size']))}, {summary['precision']} on {summary['device']}, "
        f"{summary['train_time_s']:.0f} s -> {summary['out']}"
    )
