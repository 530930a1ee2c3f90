"""The model card written next to every export: what the model is, what it was trained and
validated on, how to feed it, and what it is not for.

Everything comes from what covidzoo recorded: the checkpoint's `ModelSpec` (backbone, arguments,
aggregator, preprocessing, threshold, provenance), the ensemble file (members, fusion,
threshold) and, when the checkpoint still sits in its run folder, the run's `config.json` (data
source, split sizes) and `metrics.jsonl` (the validation metrics of the epoch whose threshold the
checkpoint stores). What is not recorded is said to be unknown, never guessed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .values import format_number

UNKNOWN = "unknown"


def parameter_count(spec: Any) -> int | None:
    """Parameters of the model `spec` describes, as trained (before BatchNorm folding); built on
    the meta device, so nothing is allocated. `None` when it cannot be built so."""
    import torch

    with contextlib.suppress(Exception), torch.device("meta"):
        return sum(p.numel() for p in spec.build().parameters())
    return None


def _read_json(path: Path) -> Any:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return None


def run_record(checkpoint: Path, spec: Any) -> tuple[dict[str, Any] | None,
                                                     dict[str, Any] | None]:
    """`(config.json, the metrics.jsonl row of the stored threshold)` of the run folder the
    checkpoint is in, each `None` when absent or not this model's run."""
    config = _read_json(checkpoint.parent / "config.json")
    if not isinstance(config, dict) or (config.get("model") or {}).get("backbone") != spec.backbone:
        return None, None
    row = None
    with contextlib.suppress(OSError):
        for line in (checkpoint.parent / "metrics.jsonl").read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if (isinstance(entry, dict) and spec.threshold is not None
                        and entry.get("val_threshold") == spec.threshold):
                    row = entry
    return config, row


def _value(value: Any) -> str:
    if value is None:
        return UNKNOWN
    return format_number(value) if isinstance(value, float) else str(value)


def _member_section(k: int, total: int, member: Any) -> list[str]:
    spec = member.spec
    params = parameter_count(spec)
    config, row = run_record(member.path, spec)
    title = f"### Member {k + 1}: {member.path.name}" if total > 1 else "### The model"
    provenance = "; ".join(f"{role}: {p.get('package') or p.get('plugin')} {p.get('version', '')}"
                           .strip() for role, p in spec.provenance.items()) or UNKNOWN
    lines = [
        title, "",
        f"- backbone: `{spec.backbone}` with {json.dumps(spec.model_args) or '{}'}",
        f"- aggregator: `{spec.aggregator}` with {json.dumps(spec.aggregator_args)}",
        f"- parameters: {UNKNOWN if params is None else f'{params:,}'}",
        f"- outputs: {member.num_classes} logit(s) per scan",
        f"- provided by: {provenance}",
        f"- threshold stored in the checkpoint: {_value(spec.threshold)}",
        "",
    ]
    if config is None:
        lines += ["Training data and validation metrics: unknown (the checkpoint records "
                  "neither, and no run folder `config.json` of this model is beside it).", ""]
        return lines
    lines += [
        f"- training data: {_value(config.get('data_source'))}; "
        f"{_value(config.get('n_train'))} training scans, {_value(config.get('n_val'))} "
        f"validation scans (val split {_value(config.get('val_split'))}, seed "
        f"{_value(config.get('seed'))})",
        f"- trained for {_value(config.get('epochs'))} epochs, precision "
        f"{_value(config.get('precision_resolved'))}, on {_value(config.get('device'))}",
    ]
    if row is None:
        lines.append("- validation metrics: unknown (no epoch in `metrics.jsonl` has this "
                     "checkpoint's threshold)")
    else:
        lines.append(
            f"- validation metrics (epoch {row.get('epoch')}, the split that chose the epoch "
            f"and the threshold, so optimistic): AUC {_value(row.get('val_auc'))}, F1 "
            f"{_value(row.get('val_f1'))} at threshold {_value(row.get('val_threshold'))}")
    return [*lines, ""]


def _preprocess_section(meta: Any) -> list[str]:
    lines = ["## Preprocessing", "",
             "Each input takes uint8 scans `B x 1 x D x H x W`, preprocessed by covidzoo "
             "(`covidzoo.data.load_scan`) with:", ""]
    for item in meta.inputs:
        p = item.preprocess
        lines.append(
            f"- `{item.name}`: size D,H,W {','.join(map(str, p.get('size', [])))}; HU window "
            f"level,width {','.join(f'{float(v):g}' for v in p.get('window', []))}; "
            f"crop slices {p.get('crop_slices')}, crop border {p.get('crop_border')}; contrast "
            f"{p.get('contrast')}")
    return [*lines, "", "The HU window applies to HU scans (DICOM, arrays); 8-bit slice images "
            "are taken as they are. The graph converts the uint8 scans to floats "
            "((x - 127.5) / 127.5) itself.", ""]


def _use_lines(class_names: Sequence[str]) -> list[str]:
    if len(class_names) > 2:
        return [f"- It outputs a probability for each of its classes ({', '.join(class_names)}) "
                "of a chest CT. It knows no other class: other findings may score as any of "
                "them."]
    return ["- It outputs the probability that a chest CT shows COVID-19 pneumonia, versus not. "
            "It knows no other disease: other pneumonias and findings may score either way."]


def _output_lines(meta: Any, classes: str) -> list[str]:
    if len(meta.class_names) > 2:
        return [f"- outputs: `{meta.outputs[0]}` (one row of class probabilities per scan) and "
                f"`{meta.outputs[1]}` (per member, then per class)",
                f"- classes: {classes}, in this order; a scan's class is its most probable one"]
    return [f"- outputs: `{meta.outputs[0]}` (covid, one per scan) and `{meta.outputs[1]}` "
            "(one column per member)",
            f"- classes: {classes}; a scan is `{meta.class_names[1]}` when its probability >= "
            "the threshold"]


def model_card(predictor: Any, meta: Any, fmt: str, out: Path,
               checks: Sequence[Any]) -> str:
    """The Markdown model card of an export of `predictor` (see the module docstring)."""
    n = len(predictor.members)
    threshold = _value(meta.threshold)
    classes = ", ".join(f"`{c}`" for c in meta.class_names)
    if len(meta.class_names) > 2:
        threshold_note = "none: a scan's class is its most probable one"
        summary = (f"An ensemble of {n} models averaging their class probabilities, from "
                   f"`{predictor.path.name}`." if predictor.kind == "ensemble"
                   else f"One model, from `{predictor.path.name}`.")
    elif predictor.kind == "ensemble":
        threshold_note = (f"{threshold}, chosen by `covidzoo ensemble` as the Youden point of "
                          "the fused probabilities on its fit split (which split, and the "
                          "metrics there, the ensemble file does not record)")
        summary = (f"An ensemble of {n} models fused by `{meta.fusion}`, from "
                   f"`{predictor.path.name}`.")
    else:
        threshold_note = (f"{threshold}, the Youden point on the validation split of training"
                          if meta.threshold is not None
                          else "none stored: 0.5 is used, not chosen on validation data")
        summary = f"One model, from `{predictor.path.name}`."
    lines = [
        f"# Model card: {out.name}", "",
        f"{summary} Exported as {fmt} by covidzoo {meta.covidzoo_version}.", "",
        "## Intended use and limits", "",
        "- For research use only. Not a medical device: not cleared or approved for "
        "diagnosis, and not to be used for clinical decisions.",
        *_use_lines(meta.class_names),
        "- Its performance outside the data described below (other scanners, protocols, "
        "populations, prevalence) is unknown until measured there.",
        "- The validation figures below come from the data that chose the checkpoint and the "
        "threshold: optimistic. A held-out test set gives unbiased ones (`covidzoo evaluate`).",
        "",
        "## Inputs and outputs", "",
        f"- inputs: {', '.join(f'`{i.name}`' for i in meta.inputs)} (uint8, dynamic batch)",
        *_output_lines(meta, classes),
        f"- threshold: {threshold_note}",
        "",
        *_preprocess_section(meta),
        "## Architecture and training", "",
    ]
    if predictor.ensembler is not None:
        lines += [f"Fusion: `{json.dumps(predictor.ensembler.to_dict())}`", ""]
    for k, member in enumerate(predictor.members):
        lines += _member_section(k, n, member)
    lines += ["## Verification", "",
              "The exported file's probabilities were compared with PyTorch's before it was "
              "written:", ""]
    lines += [f"- {c.name}, batch {c.batch}: max |difference| {c.max_abs_diff:.2g}"
              for c in checks]
    return "\n".join(lines) + "\n"


__all__ = ["model_card", "parameter_count", "run_record"]
