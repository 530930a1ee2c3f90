"""Export: a checkpoint or an ensemble file as one ONNX or TorchScript graph, verified.

The exported graph is the whole scan model: preprocessed `uint8` scans (`B x 1 x D x H x W`,
what `covidzoo.data.load_scan` returns and the on-disk cache holds) in, covid probabilities
out. Inside it are `transforms.to_model_input` (the normalisation), every member's backbone
and aggregator (BatchNorm folded, as `predict` runs them), `inference.logits_to_probs`, and for
an ensemble the fusion of the members. It has one input per distinct preprocessing of its
members (`scans`, or `scans_0`, `scans_1`, ... when members were trained at different sizes)
and two outputs: `probability` (`B`) and `member_probabilities` (`B x members`); for a model
of three or more classes, `probabilities` (`B x classes`) and `member_probabilities`
(`B x members x classes`). The batch size is dynamic. A temperature fitted by
`covidzoo calibrate` (a member's, or an ensemble file's as a whole) is applied in the graph.

What a user of the file needs besides the graph travels in it, as the JSON document
`ExportMetadata` (ONNX `metadata_props`, TorchScript `_extra_files`): the threshold chosen on
validation data (none for classes), the class names, the output names, and each input's
`PreprocessConfig`.

Export checks its own work before it reports success (MONAI's `convert_to_onnx(verify=True)`,
timm's `onnx_validate.py`): on a random batch and on synthetic chest CT phantoms, the file's
probabilities, run through onnxruntime or `torch.jit.load`, must equal PyTorch's to `ATOL`. A
file that fails is never left at `--out`.

ONNX goes through the TorchScript-based exporter (`dynamo=False`): it needs no `onnxscript`,
and names the operator it cannot convert, which `export_model` turns into one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ._version import __version__
from .ensemble import EPS
from .errors import BadInputError, CovidzooError, one_line
from .inference import Member, Predictor, load_predictor, logits_to_probs
from .metrics import CLASS_NAMES
from .native_output import native_output_discarded
from .stats import LOGIT_EPS
from .transforms import to_model_input

FORMATS = ("onnx", "torchscript")
METADATA_KEY = "covidzoo"
EXPORT_FORMAT = 1
# Exported probabilities must equal PyTorch's to this (fp32).
ATOL = 1e-4
# The batch the graph is traced with; verification runs other batch sizes (dynamic batch).
TRACE_BATCH = 1
RANDOM_BATCH = 3
OUTPUTS = ("probability", "member_probabilities")
# The outputs of a model of three or more classes: a row of class probabilities per scan.
CLASS_OUTPUTS = ("probabilities", "member_probabilities")
# Where the TorchScript exporter lists the highest opset it writes (private: a fallback below).
_LEGACY_MAX_OPSET_FALLBACK = 17


# --- fusions as graphs -------------------------------------------------------------------------


class FirstMember(nn.Module):
    """A single checkpoint: its own probability."""

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return probs[:, 0]


class MeanFusion(nn.Module):
    """`ensemble.MeanEnsembler` in a graph."""

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return probs.double().mean(dim=1).float()


class WeightedFusion(nn.Module):
    """`ensemble.WeightedEnsembler` in a graph (float64, as the ensembler computes)."""

    def __init__(self, weights: NDArray[np.float64]) -> None:
        super().__init__()
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float64))

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return torch.clamp(probs.double() @ self.weights, 0.0, 1.0).float()


class StackingFusion(nn.Module):
    """`ensemble.StackingEnsembler` in a graph (float64: its clipping at `EPS` of 1 is lost in
    float32)."""

    def __init__(self, coef: NDArray[np.float64], intercept: float) -> None:
        super().__init__()
        self.register_buffer("coef", torch.as_tensor(coef, dtype=torch.float64))
        self.register_buffer("intercept", torch.tensor(intercept, dtype=torch.float64))

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        p = torch.clamp(probs.double(), EPS, 1 - EPS)
        z = (torch.log(p) - torch.log(1 - p)) @ self.coef + self.intercept
        return (0.5 * (1.0 + torch.tanh(0.5 * z))).float()


class Tempered(nn.Module):
    """A fusion followed by an ensemble-wide temperature (`stats.apply_temperature` in a
    graph, clipped alike): sigmoid(logit(p) / T) for covid probabilities, softmax(log(p) / T)
    for classes."""

    def __init__(self, fusion: nn.Module, temperature: float) -> None:
        super().__init__()
        self.fusion = fusion
        self.temperature = float(temperature)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        fused = self.fusion(probs).double()
        if fused.dim() == 1:
            p = torch.clamp(fused, LOGIT_EPS, 1 - LOGIT_EPS)
            z = (torch.log(p) - torch.log(1 - p)) / self.temperature
            return (0.5 * (1.0 + torch.tanh(0.5 * z))).float()
        z = torch.log(torch.clamp(fused, LOGIT_EPS, 1.0)) / self.temperature
        return torch.softmax(z, dim=1).float()


# ensembler method -> its fusion as a module, built from the fitted ensembler. Verification
# checks each against the ensembler's own `predict`, so the two cannot drift apart unseen.
GRAPH_FUSIONS: dict[str, Callable[[Any], nn.Module]] = {
    "mean": lambda ensembler: MeanFusion(),
    "weighted": lambda ensembler: WeightedFusion(ensembler.weights),
    "stacking": lambda ensembler: StackingFusion(ensembler.coef, ensembler.intercept),
}


def graph_fusion(predictor: Predictor) -> nn.Module:
    """The predictor's fusion as a module (its ensemble-wide temperature applied after), or
    `BadInputError` naming a method that has none (a rank ensembler interpolates against its
    validation scores: no graph form here; classes are fused by the mean only,
    `Predictor.check_class_fusion`)."""
    if predictor.ensembler is None:
        return FirstMember()
    method = predictor.ensembler.to_dict().get("method")
    if method not in GRAPH_FUSIONS:
        raise BadInputError(
            f"{predictor.path}: the '{method}' ensembler cannot be exported as a graph "
            f"(exportable: {', '.join(GRAPH_FUSIONS)})"
        )
    if len(predictor.classes) > 2:  # before a covid fusion is traced over a class axis
        predictor.check_class_fusion()
    fusion = GRAPH_FUSIONS[method](predictor.ensembler)
    return fusion if predictor.temperature is None else Tempered(fusion, predictor.temperature)


# --- the graph and its metadata ----------------------------------------------------------------


@dataclass
class ExportInput:
    """One input of the graph: its name and the preprocessing of the scans it takes."""

    name: str
    preprocess: dict[str, Any]

    @property
    def size(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.preprocess["size"])  # type: ignore[return-value]


@dataclass
class ExportMetadata:
    """What a user of an exported file needs besides the graph; stored in the file as JSON."""

    source: str
    kind: str
    threshold: float | None
    inputs: list[ExportInput]
    members: list[dict[str, Any]]
    fusion: str | None
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    outputs: list[str] = field(default_factory=lambda: list(OUTPUTS))
    covidzoo_version: str = __version__
    format: int = EXPORT_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def properties(self) -> dict[str, str]:
        """The ONNX `metadata_props`: the whole document, and the threshold, class names and
        preprocessing on their own for tools that show properties (Netron)."""
        return {
            METADATA_KEY: self.to_json(),
            "threshold": json.dumps(self.threshold),
            "class_names": json.dumps(self.class_names),
            "preprocess": json.dumps({i.name: i.preprocess for i in self.inputs}),
        }

    @classmethod
    def from_json(cls, text: str, source: str) -> ExportMetadata:
        """The document `to_json` wrote; `BadInputError` naming `source` otherwise."""
        from .data.preprocess import PreprocessConfig

        try:
            data = json.loads(text)
            if data.get("format") != EXPORT_FORMAT:
                raise ValueError(f"export format {data.get('format')}, expected {EXPORT_FORMAT}")
            data["inputs"] = [ExportInput(**i) for i in data["inputs"]]
            meta = cls(**data)
            for item in meta.inputs:
                PreprocessConfig.from_dict(item.preprocess)  # what predict will preprocess with
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise BadInputError(f"{source}: corrupt covidzoo export metadata ({exc})") from exc
        return meta


class ScanGraph(nn.Module):
    """uint8 scans (one tensor per input) -> `(probability, member_probabilities)`, or for
    classes `(probabilities, member_probabilities)` with a class axis last."""

    def __init__(self, members: Sequence[Member], input_of: Sequence[int],
                 fusion: nn.Module) -> None:
        super().__init__()
        self.models = nn.ModuleList(member.model for member in members)
        self.num_classes = [member.num_classes for member in members]
        # Each member's calibration temperature (`covidzoo calibrate`; 1: none).
        self.temperatures = [member.spec.temperature or 1.0 for member in members]
        self.input_of = list(input_of)
        self.fusion = fusion

    def forward(self, *scans: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = [
            logits_to_probs(model(to_model_input(scans[i])) / t, n)
            for model, n, t, i in zip(self.models, self.num_classes, self.temperatures,
                                      self.input_of, strict=True)
        ]
        member_probs = torch.stack(probs, dim=1)
        return self.fusion(member_probs), member_probs


def _inputs_of(members: Sequence[Member]) -> tuple[list[ExportInput], list[int]]:
    """One input per distinct preprocessing, in member order, and each member's input."""
    digests: list[str] = []
    configs: list[dict[str, Any]] = []
    input_of = []
    for member in members:
        digest = member.preprocess.digest()
        if digest not in digests:
            digests.append(digest)
            configs.append(member.preprocess.to_dict())
        input_of.append(digests.index(digest))
    names = ["scans"] if len(configs) == 1 else [f"scans_{k}" for k in range(len(configs))]
    return [ExportInput(n, c) for n, c in zip(names, configs, strict=True)], input_of


def _member_record(member: Member, input_name: str, root: Path) -> dict[str, Any]:
    spec = member.spec
    try:
        checkpoint = os.path.relpath(member.path, root)
    except ValueError:  # another drive
        checkpoint = str(member.path)
    return {"checkpoint": checkpoint, "backbone": spec.backbone, "aggregator": spec.aggregator,
            "num_classes": member.num_classes, "input": input_name}


def graph_outputs(classes: Sequence[str]) -> tuple[str, ...]:
    """The output names of a graph of `classes`: `OUTPUTS` for two, `CLASS_OUTPUTS` for more."""
    return OUTPUTS if len(classes) <= 2 else CLASS_OUTPUTS


def build_graph(predictor: Predictor) -> tuple[ScanGraph, ExportMetadata]:
    """The predictor's whole scan model as one module, and the metadata that goes with it."""
    fusion = graph_fusion(predictor)
    inputs, input_of = _inputs_of(predictor.members)
    root = predictor.path.resolve().parent
    meta = ExportMetadata(
        source=predictor.path.name,
        kind=predictor.kind,
        threshold=predictor.threshold,
        inputs=inputs,
        members=[_member_record(m, inputs[i].name, root)
                 for m, i in zip(predictor.members, input_of, strict=True)],
        fusion=None if predictor.ensembler is None
        else predictor.ensembler.to_dict().get("method"),
        class_names=list(predictor.classes),
        outputs=list(graph_outputs(predictor.classes)),
    )
    graph = ScanGraph(predictor.members, input_of, fusion).eval()
    return graph.requires_grad_(False), meta  # a TorchScript file then returns plain tensors


# --- verification inputs and the PyTorch reference ---------------------------------------------


def random_scans(inputs: Sequence[ExportInput], batch: int, seed: int = 0) -> list[torch.Tensor]:
    """Uniformly random uint8 scans for each input."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (batch, 1, *i.size), dtype=torch.uint8, generator=generator)
            for i in inputs]


def demo_scans(inputs: Sequence[ExportInput], seed: int = 0) -> list[torch.Tensor]:
    """A covid and a non-covid synthetic chest CT (the demo's phantoms), preprocessed with each
    input's config: inputs like the ones the model was trained on."""
    from .data.preprocess import PreprocessConfig, preprocess

    volumes = _phantoms(seed)
    return [
        torch.from_numpy(np.stack([preprocess(v, PreprocessConfig.from_dict(i.preprocess))
                                   for v in volumes]))[:, None]
        for i in inputs
    ]


@lru_cache(maxsize=1)
def _phantoms(seed: int) -> tuple[Any, ...]:
    """A covid and a non-covid phantom in HU (made once: they take a while)."""
    from .data.synthetic import phantom
    from .data.volume import Volume

    return tuple(
        Volume(values=phantom(np.random.default_rng(seed + covid), (24, 64, 64), bool(covid)),
               spacing=(1.0, 1.0, 1.0), source=f"phantom {covid=}", kind="array")
        for covid in (1, 0))


def reference_probs(predictor: Predictor, graph: ScanGraph,
                    scans: Sequence[torch.Tensor]) -> tuple[NDArray[np.float64], ...]:
    """`(probability, member probabilities)` the way `covidzoo predict` computes them."""
    columns = [member.probs(scans[i]).double().cpu().numpy()
               for member, i in zip(predictor.members, graph.input_of, strict=True)]
    member_probs = np.stack(columns, axis=1)
    return predictor.fuse(member_probs), member_probs


# --- writing -----------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def onnx_opset() -> int:
    """The highest opset both the TorchScript-based exporter writes and the installed
    onnxruntime runs (probed with a one-node model, newest first)."""
    onnx, ort = _onnx_modules()
    try:
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as highest
    except ImportError:
        highest = _LEGACY_MAX_OPSET_FALLBACK
    helper, proto = onnx.helper, onnx.TensorProto
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", proto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", proto.FLOAT, [1])])
    for opset in range(highest, 6, -1):
        imports = [helper.make_opsetid("", opset)]
        model = helper.make_model(graph, opset_imports=imports,
                                  ir_version=helper.find_min_ir_version_for(imports))
        with contextlib.suppress(Exception):  # too new for this onnxruntime: try the next
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
    raise CovidzooError(f"onnxruntime {ort.__version__} runs no opset up to {highest}")


def _onnx_modules() -> tuple[Any, Any]:
    """`(onnx, onnxruntime)`, or the one line that says how to get them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise BadInputError(f"ONNX needs {exc.name}: install covidzoo[onnx]") from exc
    return onnx, onnxruntime


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Tracing warns about every Python-side shape check and the exporter about its own
    deprecation; verification, not the warnings, says whether the graph is right."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# How the TorchScript-based exporter names an operator it cannot convert: an ATen operator
# ("Exporting the operator 'aten::foo' to ONNX opset version 20 is not supported") or a custom
# one ("ONNX export failed on an operator with unrecognized namespace myplugin::op").
_OPERATOR_PATTERNS = (r"operator '([\w.:]+)'", r"unrecognized namespace ([\w.]+::[\w.]+)")


def _unsupported_operator(exc: BaseException) -> str | None:
    """The operator an exporter error names (`aten::foo`, `myplugin::op`), if any."""
    for pattern in _OPERATOR_PATTERNS:
        found = re.search(pattern, str(exc))
        if found:
            return found.group(1)
    return None


def _export_failed(model: Path, fmt: str, exc: BaseException) -> CovidzooError:
    op = _unsupported_operator(exc)
    if op is not None:
        return BadInputError(f"{model}: cannot export to {fmt}: operator '{op}' has no "
                             f"{fmt} conversion (a plugin's custom op?)")
    return CovidzooError(f"{model}: cannot export to {fmt}: {one_line(exc)}")


def _write_onnx(graph: ScanGraph, meta: ExportMetadata, examples: Sequence[torch.Tensor],
                path: str) -> None:
    onnx, _ = _onnx_modules()
    names = [i.name for i in meta.inputs]
    dynamic = {name: {0: "batch"} for name in [*names, *meta.outputs]}
    with _quiet_exporter(), native_output_discarded():
        torch.onnx.export(graph, tuple(examples), path, dynamo=False, input_names=names,
                          output_names=list(meta.outputs), dynamic_axes=dynamic,
                          opset_version=onnx_opset(), do_constant_folding=True)
    model = onnx.load(path)
    for key, value in meta.properties().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.producer_version = "covidzoo", __version__
    onnx.save(model, path)


def _write_torchscript(graph: ScanGraph, meta: ExportMetadata,
                       examples: Sequence[torch.Tensor], path: str) -> None:
    with _quiet_exporter():
        traced = torch.jit.trace(graph, tuple(examples), check_trace=False)
        torch.jit.save(traced, path, _extra_files={f"{METADATA_KEY}.json": meta.to_json()})


def onnx_session(path: str | os.PathLike[str], providers: Sequence[str] | None = None,
                 threads: int | None = None) -> Any:
    """An onnxruntime session of `path` (on the CPU unless `providers` say otherwise), with
    `threads` CPU threads (`None`: onnxruntime's default)."""
    _, ort = _onnx_modules()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options,
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # onnxruntime raises its own classes for unreadable models
        raise BadInputError(f"{path}: not a model onnxruntime can load ({one_line(exc)})"
                            ) from exc


def _runner(fmt: str, path: str, names: Sequence[str],
            outputs: Sequence[str]) -> Callable[..., tuple[Any, Any]]:
    """A function from input tensors to the exported file's two outputs, as numpy."""
    if fmt == "onnx":
        session = onnx_session(path)

        def run_onnx(*scans: torch.Tensor) -> tuple[Any, Any]:
            found = session.run(list(outputs), {n: s.numpy() for n, s in
                                                zip(names, scans, strict=True)})
            return found[0], found[1]

        return run_onnx
    with _quiet_exporter():
        loaded = torch.jit.load(path, map_location="cpu")

    def run_script(*scans: torch.Tensor) -> tuple[Any, Any]:
        with torch.inference_mode():
            prob, members = loaded(*scans)
        return prob.numpy(), members.numpy()

    return run_script


@dataclass
class Verification:
    """One check of the exported file against PyTorch."""

    name: str
    batch: int
    max_abs_diff: float


def verify(predictor: Predictor, graph: ScanGraph, meta: ExportMetadata, fmt: str,
           path: str, atol: float = ATOL) -> list[Verification]:
    """Run the file at `path` on random and phantom scans; `CovidzooError` when its
    probabilities differ from PyTorch's by more than `atol`."""
    run = _runner(fmt, path, [i.name for i in meta.inputs], meta.outputs)
    checks = []
    for name, scans in (("random uint8 scans", random_scans(meta.inputs, RANDOM_BATCH)),
                        ("synthetic chest CT phantoms", demo_scans(meta.inputs))):
        want = reference_probs(predictor, graph, scans)
        got = run(*scans)
        diff = max(float(np.max(np.abs(np.asarray(g, dtype=np.float64) - w)))
                   if np.shape(g) == np.shape(w) else float("inf")
                   for g, w in zip(got, want, strict=True))
        if not diff <= atol:  # NaN fails too
            raise CovidzooError(
                f"{predictor.path}: the exported {fmt} model differs from PyTorch on {name} "
                f"(max |difference| {diff:.3g} > {atol:g}); nothing written")
        checks.append(Verification(name, len(scans[0]), diff))
    return checks


@dataclass
class ExportResult:
    """What `export_model` wrote and how it was checked."""

    model: Path
    path: Path
    card: Path
    format: str
    opset: int | None
    metadata: ExportMetadata
    checks: list[Verification]

    def to_dict(self) -> dict[str, Any]:
        return {"model": str(self.model), "out": str(self.path), "card": str(self.card),
                "format": self.format, "opset": self.opset,
                "inputs": [asdict(i) for i in self.metadata.inputs],
                "threshold": self.metadata.threshold,
                "checks": [asdict(c) for c in self.checks], "atol": ATOL}


def card_path(out: str | os.PathLike[str]) -> Path:
    """Where the model card of an export goes: `FILE.md` beside `FILE`."""
    out = Path(out)
    return out.with_name(f"{out.name}.md")


def export_model(model: str | os.PathLike[str], out: str | os.PathLike[str], fmt: str,
                 atol: float = ATOL) -> ExportResult:
    """Export the checkpoint or ensemble file `model` to `out` as `fmt` ("onnx" or
    "torchscript"), verified against PyTorch, with its model card at `card_path(out)`.

    The file appears at `out` only once verified (it is written and checked under a temporary
    name beside it), so a failed export leaves whatever was at `out` before untouched.
    """
    from .fileio import atomic_write, atomic_write_text
    from .modelcard import model_card

    model, out = Path(model), Path(out)
    if fmt not in FORMATS:
        raise BadInputError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    if fmt == "onnx":
        _onnx_modules()
    predictor = load_predictor(model, "cpu", "fp32")
    inputs = {p.resolve() for p in [predictor.path, *(m.path for m in predictor.members)]}
    if {out.resolve(), card_path(out).resolve()} & inputs:
        raise BadInputError(f"--out {out}: that would overwrite the model being exported")
    graph, meta = build_graph(predictor)
    examples = random_scans(meta.inputs, TRACE_BATCH, seed=1)
    checks: list[Verification] = []

    def write_verified(tmp: str) -> None:
        writer = _write_onnx if fmt == "onnx" else _write_torchscript
        try:
            writer(graph, meta, examples, tmp)
        except CovidzooError:
            raise
        except Exception as exc:  # the exporter's own errors: one line, the op named
            raise _export_failed(model, fmt, exc) from exc
        checks.extend(verify(predictor, graph, meta, fmt, tmp, atol))

    atomic_write(out, write_verified)
    card = atomic_write_text(card_path(out), model_card(predictor, meta, fmt, out, checks))
    return ExportResult(model, out, card, fmt, onnx_opset() if fmt == "onnx" else None, meta,
                        checks)


# --- the ONNX backend of predict ---------------------------------------------------------------


@dataclass
class OnnxMember:
    """A member recorded in an exported file (what `PredictReport` lists)."""

    path: Path


@dataclass
class OnnxPredictor:
    """An exported ONNX file, loaded in onnxruntime: answers what `inference.Predictor` does
    for `evaluation.PredictReport` (path, kind, members, threshold)."""

    path: Path
    session: Any
    metadata: ExportMetadata

    @property
    def kind(self) -> str:
        return self.metadata.kind

    @property
    def threshold(self) -> float | None:
        return self.metadata.threshold

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.metadata.class_names)

    @property
    def members(self) -> list[OnnxMember]:
        return [OnnxMember(Path(m["checkpoint"])) for m in self.metadata.members]

    def run(self, scans: dict[str, NDArray[np.uint8]]) -> tuple[NDArray[Any], NDArray[Any]]:
        """`(probability, member probabilities)` of uint8 scans, by input name (for classes,
        each with a class axis last)."""
        probability, member_probs = self.session.run(list(self.metadata.outputs), scans)
        return probability, member_probs


def _providers(device: str | None) -> list[str]:
    _, ort = _onnx_modules()
    if device in (None, "cpu"):
        return ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise BadInputError(f"--device {device}: onnxruntime here runs on "
                        f"{', '.join(ort.get_available_providers())}")


def load_onnx_predictor(path: str | os.PathLike[str],
                        device: str | None = None) -> OnnxPredictor:
    """An ONNX file written by `covidzoo export`, with its metadata."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such ONNX file")
    # --threads (applied to torch while the command line is parsed) sizes onnxruntime too.
    session = onnx_session(path, _providers(device), torch.get_num_threads())
    found = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if found is None:
        raise BadInputError(f"{path}: an ONNX model, but not one covidzoo exported "
                            "(no covidzoo metadata)")
    return OnnxPredictor(path, session, ExportMetadata.from_json(found, str(path)))


def predict_onnx(model: str | os.PathLike[str], scans: Sequence[str | os.PathLike[str]], *,
                 device: str | None = None, precision: str = "auto", batch_size: int = 4,
                 progress: bool = False) -> Any:
    """`evaluation.predict` through an exported ONNX file: the scans are read and preprocessed
    by covidzoo's readers with the configs in the file's metadata, the model runs in
    onnxruntime. Returns an `evaluation.PredictReport`."""
    from .data.preprocess import PreprocessConfig
    from .evaluation import PredictReport, decision_threshold, scan_predictions
    from .inference import read_scan_batches
    from .progress import progress_bar

    if precision not in ("auto", "fp32"):
        raise BadInputError(f"--precision {precision}: the ONNX backend runs the exported "
                            "fp32 graph (auto or fp32)")
    if batch_size < 1:
        raise BadInputError(f"--batch-size must be at least 1, got {batch_size}")
    predictor = load_onnx_predictor(model, device)
    configs = {i.name: PreprocessConfig.from_dict(i.preprocess)
               for i in predictor.metadata.inputs}
    failed: list[tuple[str, str]] = []
    predictions = []
    chosen = decision_threshold(predictor)  # type: ignore[arg-type]
    with progress_bar(len(scans), "predicting", enabled=progress, rate_unit="scans") as advance:
        shown = 0
        for names, batches in read_scan_batches([str(s) for s in scans], configs, batch_size,
                                            failed):
            probability, member_probs = predictor.run(
                {name: batch.numpy() for name, batch in batches.items()})
            advance(len(names) + len(failed) - shown)
            shown = len(failed)
            predictions += scan_predictions(
                names, np.asarray(probability, dtype=np.float64),
                np.asarray(member_probs, dtype=np.float64), predictor.classes, chosen)
    if not predictions:
        raise BadInputError(f"every scan failed ({len(failed)}); first: {failed[0][1]}")
    return PredictReport(Path(model), predictor, chosen, predictions,  # type: ignore[arg-type]
                         failed)


__all__ = [
    "ATOL",
    "CLASS_OUTPUTS",
    "FORMATS",
    "OUTPUTS",
    "ExportInput",
    "ExportMetadata",
    "ExportResult",
    "OnnxPredictor",
    "ScanGraph",
    "build_graph",
    "card_path",
    "export_model",
    "graph_outputs",
    "load_onnx_predictor",
    "onnx_opset",
    "predict_onnx",
    "verify",
]
