"""Initial weights from local files: pretrained tensors into a freshly built model.

Nothing is downloaded. `load_init_weights(model, path)` reads a `.safetensors` file, or a
PyTorch file (`.pth`, `.pt`, `.bin`, ...) through `torch.load(..., weights_only=True)` only: the
restricted unpickler builds tensors, containers and numbers and refuses anything else, so a file
holding other objects is refused before any of its code can run. Which reader is used depends
on the file's first bytes, not on its name.

What loads, and how the file's names meet the model's:

- Common containers are unwrapped: a dict whose tensors sit under `state_dict`,
  `model_state_dict`, `model`, `net` or `module` (MedicalNet's `.pth` is
  `{"state_dict": {"module.conv1.weight": ...}, ...}`). Entries that are not tensors are ignored.
- The file's keys may carry one or two extra leading names (`module.` of DataParallel,
  `model.`, ...) and the model's may too (`backbone.` of an aggregator, `module.` of DDP,
  `_orig_mod.` of `torch.compile`): every such pairing is tried and the one under which most
  tensors fit is used (ties go to the least renaming).
- `key_map` renames the file's keys (after the leading name is stripped, before the model's is
  added): a function, or the name of one in `KEY_MAPS`. `"timm-regnet"` turns timm's RegNet
  names (`s1.b1.conv1.conv.weight`, `head.fc.weight`) into covidzoo's 3D RegNet names
  (`stages.s1.0.conv1.conv.weight`, `head.weight`).
- A tensor loads when its (renamed) key is the model's and its shape is the same; it is copied
  into the parameter or buffer, which keeps its dtype and device. With `inflate=True`, a 2D
  kernel `(out, in, kh, kw)` meeting a 3D kernel `(out, in, kd, kh, kw)` is inflated as in I3D
  (Carreira & Zisserman, 2017): repeated `kd` times along depth and divided by `kd`, so that a
  volume of identical slices gives the 2D network's activations (away from zero-padded depth
  borders). BatchNorm and Linear tensors have the same shape in 2D and 3D and load as they are.
- Everything is checked before anything is copied: a file under which no tensor fits the model,
  or a tensor to load that holds NaN or infinity, is a one-line `BadInputError` and leaves the
  model untouched. So is a file that is missing, a folder, empty, corrupt or truncated.

The `InitReport` says what happened: loaded, inflated, missing (the model's, not in the file),
unexpected (the file's, not in the model) and shape-mismatched tensors; `format_report` gives
it as table rows. BatchNorm's `num_batches_tracked` counters are not weights and are never
reported missing.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BadInputError, one_line
from .values import printable, printable_errors

if TYPE_CHECKING:
    import torch
    from torch import nn

# Keys under which training scripts keep the model's tensors, tried in this order.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
# How many leading dotted names may be stripped from the file's keys or added to them.
PREFIX_DEPTH = 2
# Example keys shown in messages and report rows.
EXAMPLES = 3
# The loaded state of a BatchNorm that files often lack and that is no weight.
COUNTER_SUFFIX = "num_batches_tracked"

Shape = tuple[int, ...]
KeyMap = Callable[[str], str]


def timm_regnet_key(key: str) -> str:
    """timm's RegNet key -> covidzoo's 3D RegNet key (`covidzoo.models.regnet3d`).

    The two networks have the same modules under different container names: timm's block `bK`
    of stage `sN` is covidzoo's `stages.sN.{K-1}`, and timm's `head.fc` is covidzoo's `head`;
    the stem and every block's `conv1`/`conv2`/`conv3`/`downsample`/`se` agree. Other keys are
    returned as they are.
    """
    block = re.fullmatch(r"s(\d+)\.b(\d+)\.(.+)", key)
    if block:
        stage, index, rest = block.groups()
        return f"stages.s{stage}.{int(index) - 1}.{rest}"
    if key.startswith("head.fc."):
        return "head." + key.removeprefix("head.fc.")
    return key


# Named key maps, for a command-line flag.
KEY_MAPS: dict[str, KeyMap] = {"timm-regnet": timm_regnet_key}


@dataclass
class InitReport:
    """What `load_init_weights` did. Keys are the model's, in the model's order, except
    `unexpected`: the file's keys, in the file's order.

    `mismatched` holds `(key, file shape, model shape)`; `inflated` is a subset of `loaded`.
    `strip_prefix`/`add_prefix` say how the file's keys were matched to the model's.
    """

    path: str
    model: str
    loaded: list[str] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, Shape, Shape]] = field(default_factory=list)
    strip_prefix: str = ""
    add_prefix: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (shapes as lists)."""
        return {
            "path": self.path,
            "model": self.model,
            "loaded": list(self.loaded),
            "inflated": list(self.inflated),
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "mismatched": [
                {"key": key, "file_shape": list(have), "model_shape": list(want)}
                for key, have, want in self.mismatched
            ],
            "strip_prefix": self.strip_prefix,
            "add_prefix": self.add_prefix,
        }

    def summary(self) -> str:
        """One line for a log: how many of the model's tensors (BatchNorm counters the file
        lacks left out, as in `missing`) came from the file."""
        total = len(self.loaded) + len(self.missing) + len(self.mismatched)
        inflated = f" ({len(self.inflated)} inflated from 2D)" if self.inflated else ""
        return (f"{self.path}: loaded {len(self.loaded)} of {total} tensors of {self.model}"
                f"{inflated}")


def format_report(report: InitReport, examples: int = EXAMPLES) -> list[tuple[str, int, str]]:
    """The report as table rows `(what, how many, first keys)`, always the same five rows:
    loaded, inflated, missing, unexpected, shape mismatch (file shape -> model shape)."""
    mismatched = [f"{key} {_shape(have)} -> {_shape(want)}"
                  for key, have, want in report.mismatched]
    return [
        ("loaded", len(report.loaded), _examples(report.loaded, examples)),
        ("inflated", len(report.inflated), _examples(report.inflated, examples)),
        ("missing", len(report.missing), _examples(report.missing, examples)),
        ("unexpected", len(report.unexpected), _examples(report.unexpected, examples)),
        ("shape mismatch", len(mismatched), _examples(mismatched, examples)),
    ]


def _shape(shape: Shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _examples(keys: list[str], examples: int) -> str:
    shown = ", ".join(printable(k) for k in keys[:examples])
    more = len(keys) - examples
    return f"{shown}, ... ({more} more)" if more > 0 else shown


@printable_errors()
def load_init_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    inflate: bool = False,
    key_map: KeyMap | str | None = None,
) -> InitReport:
    """Copy the tensors of the local file `path` that fit `model` into it; see the module's
    documentation for the rules. Returns an `InitReport`; raises `BadInputError` (one line,
    naming the file) when the file cannot be read safely or nothing in it fits."""
    import torch

    path = Path(path)
    mapper = _key_map(key_map)
    state = _read_tensors(path)
    targets = {k: v for k, v in model.state_dict(keep_vars=True).items()
               if isinstance(v, torch.Tensor)}
    name = type(model).__name__
    if not state:
        raise BadInputError(f"{path}: holds no named tensors")
    strip, add = _best_prefixes(state, targets, mapper, inflate)
    report = InitReport(path=str(path), model=name, strip_prefix=strip, add_prefix=add)
    plan: list[tuple[str, str, torch.Tensor]] = []  # (model key, file key, tensor to copy)
    seen: set[str] = set()
    for file_key, tensor in state.items():
        key = add + mapper(file_key.removeprefix(strip))
        target = targets.get(key)
        if target is None or key in seen:
            report.unexpected.append(file_key)
            continue
        seen.add(key)
        if tensor.shape == target.shape:
            plan.append((key, file_key, tensor))
        elif inflate and _inflatable(tensor.shape, target.shape):
            depth = target.shape[2]
            plan.append((key, file_key, tensor.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth))
            report.inflated.append(key)
        else:
            report.mismatched.append((key, tuple(tensor.shape), tuple(target.shape)))
    report.missing = [k for k in targets
                      if k not in seen and not k.endswith(COUNTER_SUFFIX)]
    order = {key: i for i, key in enumerate(targets)}  # report the model's keys in its order
    plan.sort(key=lambda item: order[item[0]])
    report.inflated.sort(key=order.__getitem__)
    report.mismatched.sort(key=lambda item: order[item[0]])
    if not plan:
        raise BadInputError(_nothing_fits(path, name, state, report, inflate))
    for _, file_key, tensor in plan:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BadInputError(f"{path}: tensor '{file_key}' holds NaN or infinite values")
    with torch.no_grad():
        for key, _, tensor in plan:
            targets[key].copy_(tensor)
            report.loaded.append(key)
    return report


def _key_map(key_map: KeyMap | str | None) -> KeyMap:
    if key_map is None:
        return str
    if isinstance(key_map, str):
        if key_map not in KEY_MAPS:
            raise BadInputError(f"--init-key-map: '{key_map}' is unknown; choose from "
                                f"{', '.join(sorted(KEY_MAPS))}")
        return KEY_MAPS[key_map]
    return key_map


def _inflatable(have: Shape, want: Shape) -> bool:
    """A 2D kernel `(out, in, kh, kw)` for a 3D kernel `(out, in, kd, kh, kw)`."""
    return len(have) == 4 and len(want) == 5 and have[:2] == want[:2] and have[2:] == want[3:]


def _nothing_fits(path: Path, name: str, state: Mapping[str, Any], report: InitReport,
                  inflate: bool) -> str:
    if not report.mismatched:
        return (f"{path}: no tensor matches {name}'s parameters (first keys of the file: "
                f"{_examples(list(state), EXAMPLES)})")
    key, have, want = report.mismatched[0]
    hint = ("; 2D kernels for a 3D model load with inflation"
            if not inflate and _inflatable(have, want) else "")
    return (f"{path}: no tensor fits {name}'s parameters: {len(report.mismatched)} names match"
            f" but not in shape, e.g. '{key}' is {_shape(have)} in the file, {_shape(want)} in"
            f" the model{hint}")


# --- reading the file --------------------------------------------------------------------------


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The file's named tensors: a safetensors file by its header, anything else through the
    restricted `torch.load`; containers unwrapped, entries that are not tensors left out."""
    try:
        if path.is_dir():
            raise BadInputError(f"{path}: a folder, not a weights file")
        if not path.is_file():
            raise BadInputError(f"{path}: no such weights file")
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(9)
    except BadInputError:
        raise
    except (OSError, ValueError) as exc:  # unreadable, or a name the system cannot take
        raise BadInputError(f"{path}: cannot read the weights file "
                            f"({one_line(exc, with_type=False)})") from None
    if size == 0:
        raise BadInputError(f"{path}: an empty file, not weights")
    if _looks_like_safetensors(head, size):
        return _read_safetensors(path)
    if path.suffix == ".safetensors":
        raise BadInputError(f"{path}: not a safetensors file (corrupt or truncated)")
    return _named_tensors(_torch_load(path))


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length that fits the file, then the JSON header's `{`."""
    return len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors' own error type is not public
        raise BadInputError(f"{path}: unreadable safetensors file "
                            f"({one_line(exc, with_type=False)})") from None


def _torch_load(path: Path) -> Any:
    """`torch.load` with the restricted unpickler, and only with it."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch says "Weights only load failed" of every failure of its restricted unpickler;
        # only a GLOBAL it refused is an object other than tensors, the rest is no weights file.
        if "Weights only load failed" not in str(exc) or not re.search(r"GLOBAL|global",
                                                                        str(exc)):
            raise BadInputError(f"{path}: corrupt PyTorch file "
                                f"({one_line(exc, with_type=False)})") from None
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" (first refused: {refused.group(1)})" if refused else ""
        raise BadInputError(
            f"{path}: refused, it holds objects other than tensors{what}; covidzoo loads "
            f"PyTorch files with torch.load(weights_only=True) only and never unpickles objects"
        ) from None
    except Exception as exc:  # torch raises many types for a corrupt or truncated file
        raise BadInputError(f"{path}: corrupt or truncated PyTorch file "
                            f"({one_line(exc)})") from None


def _named_tensors(obj: Any) -> dict[str, torch.Tensor]:
    """The str -> dense tensor entries of `obj`, after unwrapping `CONTAINER_KEYS` from a dict
    that holds no such entry itself."""
    while isinstance(obj, Mapping):
        tensors = _tensor_entries(obj.items())
        if tensors:
            return tensors
        inner = next((obj[k] for k in CONTAINER_KEYS
                      if isinstance(obj.get(k), Mapping) and _tensor_entries(obj[k].items())),
                     None)
        if inner is None:
            return {}
        obj = inner
    return {}


def _tensor_entries(items: Iterable[tuple[Any, Any]]) -> dict[str, torch.Tensor]:
    import torch

    return {k: v for k, v in items
            if isinstance(k, str) and isinstance(v, torch.Tensor) and v.layout == torch.strided}


# --- matching names ----------------------------------------------------------------------------


def _splits(key: str) -> list[tuple[str, str]]:
    """`(prefix, rest)` for no prefix and for every prefix of up to `PREFIX_DEPTH` dotted
    names of `key` (with its dot), `rest` never empty."""
    parts = key.split(".")
    return [(".".join(parts[:depth]) + "." if depth else "", ".".join(parts[depth:]))
            for depth in range(min(PREFIX_DEPTH, len(parts) - 1) + 1)]


def _best_prefixes(state: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                   mapper: KeyMap, inflate: bool) -> tuple[str, str]:
    """`(strip, add)`: the prefix to strip from the file's keys and the one to add to them
    under which the most tensors fit (then the most names match, then the least renaming)."""
    adds_of: dict[str, list[str]] = {}  # the rest of a model key -> the prefixes before it
    for target in targets:
        for add, rest in _splits(target):
            adds_of.setdefault(rest, []).append(add)
    strips = sorted({strip for key in state for strip, _ in _splits(key)})
    best: tuple[tuple[int, int, int], str, str] = ((0, 0, 0), "", "")
    for strip in strips:
        scores: dict[str, list[int]] = {}  # add -> [tensors that fit, names that match]
        for file_key, tensor in state.items():
            key = mapper(file_key.removeprefix(strip))
            for add in adds_of.get(key, ()):
                want = targets[add + key].shape
                fits = want == tensor.shape or (inflate and _inflatable(tensor.shape, want))
                score = scores.setdefault(add, [0, 0])
                score[0] += int(fits)
                score[1] += 1
        for add, (fits, names) in sorted(scores.items()):
            candidate = ((fits, names, -len(strip) - len(add)), strip, add)
            if candidate[0] > best[0]:
                best = candidate
    return best[1], best[2]
