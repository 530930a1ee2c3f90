"""`covidzoo train BACKBONE`: train on a data folder, a manifest, a cache or the demo data."""

from __future__ import annotations

from typing import Any

import click

from ._common import parse_model_args, parse_size, print_json
from ._regnet_options import check_regnet3d_options, regnet3d_kwargs, regnet3d_options


@click.command("train")
@click.argument("backbone")
@regnet3d_options
@click.option("--backbones", help="resdense2d: the two timm models, e.g. resnet18,densenet121.")
@click.option("--model-arg", "model_arg", multiple=True, metavar="KEY=VALUE",
              help="Any other keyword of the backbone's factory (repeatable, JSON values).")
@click.option("--aggregator", default="auto", show_default=True,
              help="How slices or volumes become one score per scan (see `covidzoo models`).")
@click.option("--data", type=click.Path(), help="Dataset folder (COV19-CT-DB layout).")
@click.option("--manifest", type=click.Path(), help="CSV of path,label[,split].")
@click.option("--cache", type=click.Path(), help="A cache made by `covidzoo data prepare`.")
@click.option("--size", help="Scan size D,H,W after preprocessing.")
@click.option("--epochs", type=int, help="Epochs (default 8 on the demo data, else 30).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3,
              show_default=True)
@click.option("--optimizer", default="adamw", show_default=True,
              help="Any registered optimizer: adam, adamw, sgd, rmsprop, novograd, ...")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=1e-4, show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "step", "none"]), default="cosine",
              show_default=True)
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--pos-weight", type=click.FloatRange(min=0, min_open=True),
              help="Weight of the covid class in the loss (the 3D RegNet paper's loss weight).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              show_default=True)
@click.option("--channels-last/--no-channels-last", default=None,
              help="Channels-last memory format (default: what was measured fastest).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--augment/--no-augment", default=True, show_default=True)
@click.option("--freeze-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Staged fine-tuning: epochs with the backbones frozen.")
@click.option("--unfreeze-last", type=click.IntRange(min=0), default=0, show_default=True,
              help="Staged fine-tuning: layers of each backbone unfrozen afterwards.")
@click.option("--val-split", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Fraction of scans held out for validation when the data has no val split.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(), help="Run folder (default runs/BACKBONE-TIME).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.safetensors.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]))
@click.option("--workers", type=click.IntRange(min=0),
              help="Data-loader worker processes.  [default: 0 on CPU, up to 8 on CUDA]")
@click.option("--patience", type=click.IntRange(min=1), help="Early stopping patience (epochs).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def train(backbone: str, backbones: str | None, model_arg: tuple[str, ...], size: str | None,
          compile_: bool, as_json: bool, **options: Any) -> None:
    """Train BACKBONE; with no --data/--manifest/--cache, on the built-in demo data."""
    from .. import get_component
    from ..errors import BadInputError
    from ..train import TrainConfig
    from ..train import train as run_training

    comp = get_component(backbone)
    model_args = parse_model_args(model_arg)
    regnet_args = regnet3d_kwargs(options)
    check_regnet3d_options(comp, regnet_args)
    model_args.update(regnet_args)
    if backbones is not None:
        if comp.name != "resdense2d":
            raise BadInputError(f"--backbones applies to resdense2d, not '{backbone}'")
        pair = tuple(b.strip() for b in backbones.split(","))
        if len(pair) != 2 or not all(pair):
            raise BadInputError(f"--backbones '{backbones}': expected two timm model names")
        model_args["backbones"] = pair
    train_keys = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(
        backbone=backbone,
        model_args=model_args,
        size=None if size is None else parse_size("--size", size),
        compile=compile_,
        **{k: v for k, v in options.items() if k in train_keys},
    )
    summary = run_training(cfg, quiet=as_json)
    if as_json:
        print_json(summary)
        return
    click.echo(
        f"{summary['backbone']}: best val AUC {summary['best_val_auc']} at epoch "
        f"{summary['best_epoch']} ({summary['epochs_run']}/{summary['epochs']} epochs, scans "
        f"{'x'.join(map(str, summary['size']))}, {summary['precision']} on {summary['device']}, "
        f"{summary['train_time_s']:.0f} s) -> {summary['out']}"
    )
