"""The `export` command: a checkpoint or ensemble file as a verified ONNX or TorchScript file,
with its model card.

Nothing heavy is imported at module level: `covidzoo --help` lists it without importing torch.
"""

from __future__ import annotations

from pathlib import Path

import click

from .options import print_json, threads_option


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), required=True,
              help="onnx (run with onnxruntime: install covidzoo[onnx]) or torchscript.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The file to write; its model card goes to OUT.md.")
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def export(model: Path, fmt: str, out: Path, as_json: bool) -> None:
    """Export a checkpoint or ensemble file MODEL as one graph: preprocessed uint8 scans in,
    covid probabilities (or, for three or more classes, class probabilities) out, dynamic
    batch, the threshold, class names and preprocessing in the file's metadata.

    The export is verified before it is kept: on random and on synthetic CT scans its
    probabilities must equal PyTorch's to 1e-4. A model card is written beside it (OUT.md).
    """
    from ..export import export_model

    result = export_model(model, out, fmt)
    if as_json:
        print_json(result.to_dict())
        return
    opset = f", opset {result.opset}" if result.opset is not None else ""
    click.echo(f"exported {model} to {result.path} ({fmt}{opset})")
    for check in result.checks:
        click.echo(f"verified on {check.name} (batch {check.batch}): max |difference| "
                   f"{check.max_abs_diff:.2g}")
    click.echo(f"model card: {result.card}")


__all__ = ["export"]
