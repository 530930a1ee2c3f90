"""Training runs: `TrainConfig` (everything a run depends on) and `Trainer` (one run).

`train(TrainConfig(...))` is what `covidzoo train` runs. A run folder holds:

    config.json          the full resolved configuration
    metrics.jsonl        one JSON line per epoch
    split.csv            the scans the run trains and validates on (path,label,split,group)
    best.safetensors     the model of the best validation AUC (with its Youden threshold)
    last.safetensors     the model after the last finished epoch, plus last.state.* for --resume

Each of these is a link to `current/NAME`: the run's saved state is one generation,
`generations/epoch-NNNNNN/`, written whole and made current by replacing the link `current`
(`covidzoo.fileio.Generations`), so a crash at any moment leaves every name of one epoch, and
`--resume` checks the generation's sha256 sums before it continues. One training at a time holds
the folder's lock (`.covidzoo.lock`).

Only whole epochs are checkpointed, so `--resume` after Ctrl-C continues exactly where an
uninterrupted run would be: the sampler order, augmentation and dropout are all seeded per epoch
or restored from the saved RNG state. The loop's pieces (loader, step, schedule, RNG) are in
`covidzoo.loop`; device, precision and processes in `covidzoo.runtime`; the data in
`covidzoo.data.sources`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ._version import __version__
from .checkpoint import (
    ModelSpec,
    load_state,
    read_spec,
    save_checkpoint,
    save_state,
    state_paths,
)
from .data.layouts import write_split_csv
from .data.sources import DataSource, TrainingData, data_source, scan_size, training_data
from .ema import ModelEma
from .errors import BadInputError, CovidzooError, one_line
from .factory import check_scan_size, default_aggregator, get_component, spatial_dims
from .fileio import (
    CURRENT,
    GENERATIONS,
    LOCK_NAME,
    Generation,
    Generations,
    exclusive_lock,
    interrupts_deferred,
    kill_point,
)
from .loop import (
    device_batch,
    eval_frozen,
    fine_tunable,
    lr_factor,
    rng_state,
    seed_everything,
    set_rng_state,
    train_step,
    training_loader,
)
from .mixing import BatchMixer
from .progress import progress_bar
from .runtime import (
    Precision,
    all_gather_arrays,
    all_reduce_mean,
    barrier,
    broadcast,
    resolve_device,
    resolve_precision,
    resolve_workers,
    scans_channels_last,
    setup_distributed,
    shutdown_distributed,
    sync_buffers,
    to_layout,
    tune_cudnn,
)
from .task import Task
from .transforms import AugmentConfig, ScanAugment
from .values import format_number

# Epochs when --epochs is not given: the demo is sized to learn its signal in a few minutes.
DEMO_EPOCHS = 15
DEFAULT_EPOCHS = 30
# Where runs go without --out, and where --resume without --out looks for the latest one.
RUNS = Path("runs")
# How often the progress bar reads the running loss off a GPU (each read waits for the device).
LOSS_READ_S = 2.0
# What BatchNorm (and dropout) in frozen layers do while fine-tuning: "eval" keeps their
# running statistics fixed; "train" normalises with batch statistics and updates them.
FROZEN_BN_MODES = ("eval", "train")
# The names a run folder shows, each a link to the file of the current generation.
RUN_FILES = ("config.json", "metrics.jsonl", "split.csv", "best.safetensors",
             "last.safetensors", "last.state.safetensors", "last.state.json", "ema.safetensors")
# What --resume may change in config.json: how the run is executed and how long it goes on, not
# what it learns from. --epochs extends (or shortens) a run, its schedule stretched to the new
# length; --patience only decides when to stop; the device, precision, layout, compilation,
# processes, workers and threads change the speed, not the data, model or recipe (on another
# device or precision the numbers are not bit-identical, as on any other machine); `out` and
# `resume` are how the folder was named; the version and the provenance record who wrote it.
# Everything else (data, size, model and aggregator options, optimizer, schedule, seed,
# augmentation, batch size, validation split, ...) must be what the run was started with.
RESUME_MAY_CHANGE = frozenset({
    "epochs", "patience", "out", "resume", "device", "workers", "workers_resolved",
    "threads_resolved", "world_size", "precision", "precision_resolved", "channels_last",
    "channels_last_resolved", "compile", "compile_mode_resolved", "covidzoo_version",
    "model.provenance",
})
# What torch says when BatchNorm trains on a batch of one value per channel.
BATCHNORM_NEEDS_TWO = "Expected more than 1 value per channel when training"
# The largest --seed: numpy seeds with 32 bits.
MAX_SEED = 2**32 - 1


@dataclass
class TrainConfig:
    """Everything a training run depends on; stored in config.json."""

    backbone: str
    model_args: dict[str, Any] = field(default_factory=dict)
    aggregator: str = "auto"
    aggregator_args: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    manifest: str | None = None
    cache: str | None = None
    size: tuple[int, int, int] | None = None
    # Preprocessing steps besides the size (`PreprocessConfig` keywords: crop, slices,
    # spacing, ...), as `--preprocess` spells them; the defaults when empty.
    preprocess: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    batch_size: int = 4
    lr: float = 1e-3
    optimizer: str = "adamw"
    optimizer_args: dict[str, Any] = field(default_factory=dict)
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: int = 1
    pos_weight: float | None = None
    # One weight per class in the loss (generalises pos_weight); label smoothing of targets.
    class_weights: tuple[float, ...] | None = None
    label_smoothing: float = 0.0
    # Regularisers, off when None: mixup / cutmix Beta(alpha, alpha), and the decay of an
    # exponential moving average of the weights (covidzoo.mixing, covidzoo.ema).
    mixup: float | None = None
    cutmix: float | None = None
    ema: float | None = None
    # Initial weights from a local file (covidzoo.weights): inflated from 2D with
    # init_inflate, names mapped by a named key map (e.g. "timm-regnet").
    init: str | None = None
    init_inflate: bool = False
    init_key_map: str | None = None
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    augment: bool = True
    freeze_epochs: int = 0
    unfreeze_last: int = 0
    frozen_bn: str = "eval"
    val_split: float | None = None
    # A split CSV (`layouts.write_split_csv`: a cross-validation fold) that decides the train
    # and val scans instead of the data's own splits and --val-split.
    split_file: str | None = None
    seed: int = 0
    out: str | None = None
    resume: bool = False
    device: str | None = None
    workers: int | None = None  # None: runtime.default_workers (0 on CPU, several on CUDA)
    patience: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        """Refuse values no run can use, naming the flag (the command line checks ranges too;
        this also covers NaN, infinity and the Python API)."""
        positive = {"--lr": self.lr, "--pos-weight": self.pos_weight}
        for flag, value in {**positive, "--weight-decay": self.weight_decay}.items():
            if value is not None and not (math.isfinite(value)
                                          and (value > 0 or flag not in positive and value == 0)):
                bound = "> 0" if flag in positive else ">= 0"
                raise BadInputError(f"{flag} must be a finite number {bound}, got {value}")
        counts = {"--epochs": (self.epochs, 1), "--batch-size": (self.batch_size, 1),
                  "--warmup-epochs": (self.warmup_epochs, 0),
                  "--freeze-epochs": (self.freeze_epochs, 0),
                  "--unfreeze-last": (self.unfreeze_last, 0), "--patience": (self.patience, 1)}
        for flag, (value, least) in counts.items():
            if value is not None and value < least:
                raise BadInputError(f"{flag} must be at least {least}, got {value}")
        if not 0 <= self.seed <= MAX_SEED:
            raise BadInputError(f"--seed must be between 0 and {MAX_SEED}, got {self.seed}")
        if self.val_split is not None and not 0 < self.val_split < 1:
            raise BadInputError(f"--val-split must be between 0 and 1, got {self.val_split}")
        if self.preprocess:
            from .data.preprocess import PreprocessConfig

            try:
                PreprocessConfig(**self.preprocess)
            except TypeError as exc:
                raise BadInputError(f"--preprocess: {exc}") from None
            except BadInputError as exc:
                raise BadInputError(f"--preprocess: {exc}") from None
        from .ema import check_decay
        from .mixing import check_mix_args

        check_mix_args(self.mixup or 0.0, self.cutmix or 0.0)  # names --mixup / --cutmix
        if self.ema is not None:
            check_decay(self.ema)  # names --ema
        if not (math.isfinite(self.label_smoothing) and 0 <= self.label_smoothing < 1):
            raise BadInputError(f"--label-smoothing must be in [0, 1), got "
                                f"{self.label_smoothing}")
        if (self.init_inflate or self.init_key_map) and self.init is None:
            raise BadInputError("--init-inflate and --init-key-map need --init FILE")
        if self.init is not None:  # before any data is prepared
            from .weights import KEY_MAPS

            if not Path(self.init).is_file():
                raise BadInputError(f"--init {self.init}: no such weights file")
            if self.init_key_map is not None and self.init_key_map not in KEY_MAPS:
                raise BadInputError(f"--init-key-map: '{self.init_key_map}' is unknown; "
                                    f"choose from {', '.join(sorted(KEY_MAPS))}")
        if self.frozen_bn not in FROZEN_BN_MODES:
            raise BadInputError(f"--frozen-bn must be one of {', '.join(FROZEN_BN_MODES)}, "
                                f"got '{self.frozen_bn}'")

    @property
    def source(self) -> DataSource:
        return data_source(self.data, self.manifest, self.cache)


def default_out(backbone: str) -> str:
    return str(RUNS / f"{backbone}-{time.strftime('%Y%m%d-%H%M%S')}")


def latest_run(backbone: str, runs: Path = RUNS) -> Path:
    """`--resume` without `--out`: the run folder under `runs` holding a `backbone` model whose
    last checkpoint was written last (by modification time, then name)."""
    found = []
    for last in runs.glob("*/last.safetensors"):
        try:
            if read_spec(last).backbone == backbone:
                found.append((last.stat().st_mtime, last.parent.name))
        except (BadInputError, OSError):
            continue  # not a checkpoint, or gone meanwhile: not a run to continue
    if not found:
        raise BadInputError(f"--resume: no {backbone} run under {runs}/ to continue; give --out "
                            "RUN_FOLDER")
    return runs / max(found)[1]


def create_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float,
                     **kwargs: Any) -> Any:
    """The registered optimizer `name` over `model`'s trainable parameters.

    The factory receives one parameter group, `{"params": [...], "param_names": [...]}` (the
    names as `named_parameters` gives them), so that it can split the group, e.g. to exclude
    norms and biases from weight decay (`covidzoo.optim.param_groups`).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    group = {"params": [p for _, p in named], "param_names": [n for n, _ in named]}
    return get_component(name, "optimizer").create(params=[group], lr=lr,
                                                   weight_decay=weight_decay, **kwargs)


@dataclass
class RunState:
    """What a run trains and where it stands: built by `Trainer.setup`, advanced by epochs."""

    data: TrainingData
    size: tuple[int, int, int]
    epochs: int
    model: nn.Module  # the plain model, saved in checkpoints
    train_model: nn.Module  # what the steps call: DDP- and compile-wrapped
    spec: ModelSpec
    optimizer: Any
    scheduler: Any
    scaler: Any
    augment: ScanAugment | None
    task: Task
    mixer: BatchMixer | None = None  # --mixup / --cutmix
    ema: ModelEma | None = None  # --ema: the average of `model`'s weights
    start_epoch: int = 1
    best_auc: float = -1.0
    stale: int = 0
    has_best: bool = False  # a best.safetensors is saved
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """One training run: `setup()` builds it, `run()` trains it and returns the summary."""

    def __init__(self, cfg: TrainConfig, quiet: bool = False) -> None:
        self.cfg = cfg
        self.quiet = quiet
        cfg.check()
        self.dist, self.device = setup_distributed(resolve_device(cfg.device))
        tune_cudnn(self.device)
        self.workers = resolve_workers(cfg.workers, self.device)
        self._loaders: dict[int, tuple[Dataset, DataLoader]] = {}
        self.precision: Precision = resolve_precision(
            cfg.precision, self.device, cfg.backbone, "train", cfg.channels_last
        )
        get_component(cfg.optimizer, "optimizer")  # fail early on an unknown optimizer
        lr_factor(cfg.schedule, 0, 1, 0)
        self.spatial_dims = spatial_dims(cfg.backbone)
        self.channels_last_scans = scans_channels_last(self.precision, self.spatial_dims)
        self.compile_mode = self.precision.compile_mode or ("default" if cfg.compile else None)
        if cfg.resume and cfg.out is None:
            self.out = latest_run(cfg.backbone)
            self._log(f"--resume: continuing {self.out}, the latest {cfg.backbone} run under "
                      f"{RUNS}/")
        else:
            self.out = Path(cfg.out or broadcast(self.dist, default_out(cfg.backbone)))
        self.generations = Generations(self.out, prefix="epoch")
        self.resume_from: Generation | None = None  # what `open_run_folder` found to continue
        self._check_out_path()

    # -- the run folder --

    def _check_out_path(self) -> None:
        """Refuse an --out that cannot be a run folder before any work (nothing is written)."""
        for folder in (self.out, *self.out.parents):
            if folder.exists() or folder.is_symlink():
                if not folder.is_dir():
                    where = "" if folder == self.out else f" ({folder} is a file)"
                    raise BadInputError(f"--out {self.out}: not a folder{where}")
                break
        if self.cfg.resume and not self.out.is_dir():
            raise BadInputError(f"--resume: no run folder {self.out} to resume from")

    @contextmanager
    def locked_run_folder(self) -> Iterator[None]:
        """Hold the run folder's lock (rank 0) while the run reads and writes it, and check it
        under the lock (`open_run_folder`); the other ranks learn rank 0's verdict. Where the
        run ends without a saved epoch (refused, or the set-up failed), the lock file and
        folder it created are removed again."""
        if not self.dist.main:
            refused = broadcast(self.dist, None)
            if refused is not None:
                raise BadInputError(refused)
            self.resume_from = self._resumable(write=False) if self.cfg.resume else None
            yield
            return
        created = [p for p in (self.out, self.out / LOCK_NAME, self.out / GENERATIONS)
                   if not p.exists()]
        try:
            with ExitStack() as lock:
                try:
                    lock.enter_context(exclusive_lock(self.out, "a training run"))
                    self.open_run_folder()
                except Exception as exc:
                    broadcast(self.dist, one_line(exc))  # every rank stops, not rank 0 alone
                    raise
                broadcast(self.dist, None)
                yield
        finally:
            if created and self.generations.current_label() is None:
                self._remove_unused(created)

    def open_run_folder(self) -> None:
        """Under the lock: clean up what a crash left, then check the folder is free (a new run)
        or find the generation to continue (--resume), repairing the links."""
        self.generations.clean()
        if not self.cfg.resume:
            if self._foreign_entries() or self.generations.labels() or (
                    self.generations.current_label() is not None):
                raise BadInputError(
                    f"{self.out} already holds a run; pass --resume or choose another --out")
            return
        for name in RUN_FILES:
            link = self.out / name
            if (link.exists() or link.is_symlink()) and not self._is_our_link(link):
                raise BadInputError(
                    f"--resume: {link} is not the link to {CURRENT}/{name} that covidzoo keeps "
                    "in a run folder (a folder of another program or of an older covidzoo)")
        self.resume_from = self._resumable(write=True)
        if self.resume_from is None:
            if not (self.out / GENERATIONS).is_dir():
                raise BadInputError(f"--resume: no run in {self.out} to resume from")
            self._log(f"--resume: {self.out} holds no finished save yet; starting from epoch 1")
        else:
            self._link(self.resume_from)

    def _resumable(self, write: bool) -> Generation | None:
        """The verified generation to continue from (see `Generations.resumable`), of the same
        backbone; `write=False` (the other ranks) only reads the one rank 0 chose."""
        if write:
            found = self.generations.resumable(warn=self._warn)
        else:
            label = self.generations.current_label()
            found = None if label is None else self.generations.verify(label)
        if found is not None:
            spec = read_spec(found.path / "last.safetensors")
            if spec.backbone != self.cfg.backbone:
                raise BadInputError(f"--resume: {self.out / 'last.safetensors'} holds a "
                                    f"'{spec.backbone}' model, not '{self.cfg.backbone}'")
        return found

    def _foreign_entries(self) -> list[str]:
        """What the folder holds that a training run did not write."""
        if not self.out.is_dir():
            return []
        ours = {LOCK_NAME, GENERATIONS, CURRENT}
        return sorted(p.name for p in self.out.iterdir()
                      if p.name not in ours and not self._is_our_link(p))

    def _is_our_link(self, path: Path) -> bool:
        return (path.name in RUN_FILES and path.is_symlink()
                and Path(os.readlink(path)) == Path(CURRENT) / path.name)

    def _link(self, generation: Generation) -> None:
        """Each of the run folder's names links to its file in the current generation; a name
        the generation lacks (no best model yet) has no link."""
        for name in RUN_FILES:
            link = self.out / name
            if name in generation and not link.is_symlink():
                os.symlink(Path(CURRENT) / name, link)
            elif name not in generation and self._is_our_link(link):
                link.unlink()

    def _remove_unused(self, created: list[Path]) -> None:
        """Remove what this run created and left unused: the lock file, an empty generations
        folder, the run folder when nothing else is in it."""
        for path in reversed(created):
            with suppress(OSError):
                if path.is_dir():
                    path.rmdir()  # only when empty
                elif path.exists():
                    path.unlink()

    def _warn(self, message: str) -> None:
        if self.dist.main:
            print(f"covidzoo: warning: {message}", file=sys.stderr)

    # -- set-up --

    def _log(self, message: str) -> None:
        if self.dist.main and not self.quiet:
            print(message, file=sys.stderr)

    def _loader(self, dataset: Dataset, train: bool, epoch: int) -> DataLoader:
        """The run's loader of `dataset` (one per data set, see `training_loader`) at `epoch`."""
        if id(dataset) not in self._loaders:
            per_rank = -(-len(dataset) // self.dist.world)  # type: ignore[arg-type]
            loader = training_loader(
                dataset, self.cfg.batch_size, self.workers, self.device, seed=self.cfg.seed,
                shuffle=train, dist=self.dist, drop_last=train and per_rank > self.cfg.batch_size,
            )
            self._loaders[id(dataset)] = (dataset, loader)  # the data set kept: ids stay unique
        loader = self._loaders[id(dataset)][1]
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        return loader

    def _load_data(self, size: tuple[int, int, int]) -> TrainingData:
        """Rank 0 prepares the cache; the others open it once it is complete."""
        cfg = self.cfg

        split = self._saved_split()

        def load(prepare: bool) -> TrainingData:
            return training_data(cfg.source, size, val_split=cfg.val_split, seed=cfg.seed,
                                 workers=self.workers, quiet=self.quiet or not prepare,
                                 prepare=prepare, steps=cfg.preprocess, split=split)

        data = load(prepare=True) if self.dist.main else None
        barrier(self.dist)
        data = data or load(prepare=False)
        data.check(cfg.batch_size)
        return data

    def _init_weights(self, model: nn.Module) -> None:
        """--init FILE: load its matching tensors into the fresh model and show what loaded."""
        from .weights import format_report, load_init_weights

        report = load_init_weights(model, self.cfg.init, inflate=self.cfg.init_inflate,
                                   key_map=self.cfg.init_key_map)
        self.init_report = report.to_dict()
        if not self.quiet and self.dist.main:
            from .cli.options import print_table

            print(report.summary(), file=sys.stderr)
            print_table("--init", ["tensors", "count", "first keys"], format_report(report))

    def _saved_split(self) -> list[Any] | None:
        """The split this run uses when it is decided already: the one --resume's generation
        saved (a run continues on the scans it started with, even if --val-split's draw or
        the data's listing would now differ), else --split-file's; None otherwise."""
        from .data.layouts import read_split_csv

        if self.resume_from is not None and (self.resume_from.path / "split.csv").exists():
            return read_split_csv(self.resume_from.path / "split.csv")
        if self.cfg.split_file is not None:
            return read_split_csv(self.cfg.split_file)
        return None

    def _spec(self, preprocess: dict[str, Any], task: Task | None = None) -> ModelSpec:
        cfg = self.cfg
        task = task or Task()
        return ModelSpec(
            backbone=cfg.backbone,
            model_args={"in_chans": 1, **cfg.model_args, "num_classes": task.outputs},
            classes=list(task.classes),
            aggregator=(
                default_aggregator(cfg.backbone) if cfg.aggregator == "auto" else cfg.aggregator
            ),
            aggregator_args=dict(cfg.aggregator_args),
            preprocess=preprocess,
        )

    def _build_model(self, preprocess: dict[str, Any], task: Task
                     ) -> tuple[nn.Module, ModelSpec]:
        spec = self._spec(preprocess, task)
        model = to_layout(spec.build().to(self.device), self.precision, self.spatial_dims)
        return model, spec

    def setup(self) -> RunState:
        """Data, model, optimizer, schedule and scaler; the saved state under --resume; the
        resolved config.json and, for a new run, an epoch-0 checkpoint to resume from."""
        cfg = self.cfg
        seed_everything(cfg.seed)
        size = scan_size(cfg.backbone, cfg.source, cfg.size)
        spec = self._spec({})
        check_scan_size(spec.backbone, size, spec.model_args, spec.aggregator,
                        spec.aggregator_args)  # before the data is prepared
        epochs = cfg.epochs or (DEMO_EPOCHS if cfg.source.is_demo else DEFAULT_EPOCHS)
        saved_config = self._saved_config()
        if saved_config is not None:  # the settings known so far, before the data is prepared
            self._check_same_run(saved_config, {**cfg.to_dict(), "size": list(size)})
        data = self._load_data(size)
        task = Task(data.classes, cfg.pos_weight, cfg.class_weights, cfg.label_smoothing)
        model, spec = self._build_model(data.preprocess, task)
        if cfg.init is not None and self.resume_from is None:  # resumed: the saved weights
            self._init_weights(model)
        if cfg.freeze_epochs > 0:
            target = fine_tunable(model)
            if target is None:
                raise BadInputError(f"--freeze-epochs: '{cfg.backbone}' has no staged fine-tuning")
            if getattr(target, "pretrained", None) is False and self.dist.main:
                print(f"covidzoo: warning: --freeze-epochs {cfg.freeze_epochs} freezes the "
                      f"randomly initialised backbones of '{cfg.backbone}' (no pretrained "
                      "weights given, e.g. --model-arg pretrained_path=...)", file=sys.stderr)
        optimizer = create_optimizer(cfg.optimizer, model, cfg.lr, cfg.weight_decay,
                                     **cfg.optimizer_args)
        steps_per_epoch = max(len(data.train) // (cfg.batch_size * self.dist.world), 1)
        total_steps, warmup_steps = steps_per_epoch * epochs, steps_per_epoch * cfg.warmup_epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(cfg.schedule, s, total_steps, warmup_steps)
        )
        state = RunState(
            data=data, size=size, epochs=epochs, model=model, train_model=model, spec=spec,
            optimizer=optimizer, scheduler=scheduler,
            scaler=torch.amp.GradScaler(self.device.type, enabled=self.precision.use_scaler),
            augment=ScanAugment(AugmentConfig(), seed=cfg.seed) if cfg.augment else None,
            task=task,
            mixer=(BatchMixer(cfg.mixup or 0.0, cfg.cutmix or 0.0, seed=cfg.seed,
                              num_classes=None if task.binary else len(task.classes))
                   if cfg.mixup or cfg.cutmix else None),
            ema=ModelEma(model, cfg.ema) if cfg.ema is not None else None,
        )
        if saved_config is not None:
            self._check_same_run(saved_config, self._resolved_config(state), every_key=True)
        if self.resume_from is not None:
            self._restore(state, self.resume_from)
        if self.dist.world > 1:
            state.train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if self.compile_mode is not None:
            state.train_model = torch.compile(state.train_model, mode=self.compile_mode)
        if self.dist.main and self.resume_from is None:  # an epoch-0 save to resume from
            with interrupts_deferred():
                self._save(state, epoch=0)
        return state

    def _saved_config(self) -> dict[str, Any] | None:
        """The config.json of the generation --resume continues from (None: a new run)."""
        if self.resume_from is None:
            return None
        path = self.resume_from.path / "config.json"
        try:
            saved = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadInputError(f"{path}: corrupt run configuration ({exc})") from None
        if not isinstance(saved, dict):
            raise BadInputError(f"{path}: corrupt run configuration (not a JSON object)")
        return saved

    def _check_same_run(self, saved: dict[str, Any], now: dict[str, Any],
                        every_key: bool = False) -> None:
        """Refuse to continue a run with other data or settings than it was started with (all
        but `RESUME_MAY_CHANGE`), naming each difference; `every_key=False` compares only the
        keys of `now`."""
        old, new = _flat(saved), _flat(json.loads(json.dumps(now)))
        # A key the saved config lacks was written before the setting existed: it had the
        # setting's default then (e.g. no --mixup, two classes).
        defaults = _flat(json.loads(json.dumps(
            {**asdict(TrainConfig(backbone="")), "model": ModelSpec(backbone="").to_dict()})))
        old = {**{k: v for k, v in defaults.items() if k in new}, **old}
        keys = sorted(set(old) | set(new)) if every_key else sorted(new)
        differ = [f"{key} {json.dumps(old.get(key))} then, {json.dumps(new.get(key))} now"
                  for key in keys
                  if key not in RESUME_MAY_CHANGE and old.get(key) != new.get(key)]
        if differ:
            raise BadInputError(
                f"--resume: {self.out} was started with other settings: {'; '.join(differ)}; "
                "give the same ones, or choose another --out for a new run")

    def _resolved_config(self, state: RunState) -> dict[str, Any]:
        return {**self.cfg.to_dict(), "size": list(state.size), "epochs": state.epochs,
                "out": str(self.out), "precision_resolved": self.precision.name,
                "channels_last_resolved": self.precision.channels_last,
                "compile_mode_resolved": self.compile_mode, "workers_resolved": self.workers,
                "threads_resolved": torch.get_num_threads(),
                "device": str(self.device), "world_size": self.dist.world,
                "model": state.spec.to_dict(), "augment_config": AugmentConfig().to_dict(),
                "data_source": state.data.source, "n_train": len(state.data.train),
                "n_val": len(state.data.val), "covidzoo_version": __version__}

    # -- the loop --

    def run(self) -> dict[str, Any]:
        with self.locked_run_folder():
            state = self.setup()
            self._log(
                f"training {self.cfg.backbone} on {state.data.source}: {len(state.data.train)} "
                f"train / {len(state.data.val)} val scans of {'x'.join(map(str, state.size))}, "
                f"{state.epochs} epochs, {self.precision.name} on {self.device}"
            )
            started = time.perf_counter()
            completed, interrupted = self._epochs(state)
            return self._summary(state, completed, interrupted, time.perf_counter() - started)

    def _epochs(self, state: RunState) -> tuple[int, bool]:
        """Train from `state.start_epoch` on; returns (last epoch on disk, interrupted)."""
        cfg = self.cfg
        completed = state.start_epoch - 1  # the last epoch whose checkpoint is on disk
        try:
            for epoch in range(state.start_epoch, state.epochs + 1):
                row = self._epoch(state, epoch)
                if self.dist.main:
                    with interrupts_deferred():
                        self._record(state, row)
                        completed = epoch  # before a deferred Ctrl-C is raised
                completed = epoch
                self._log(
                    f"epoch {epoch}/{state.epochs}  train loss {format_number(row['train_loss'])}"
                    f"  val loss {format_number(row['val_loss'])}  val AUC "
                    f"{format_number(row['val_auc'])}  F1 {format_number(row['val_f1'])}  "
                    f"{row['train_scans_per_s']:.1f} scans/s"
                )
                if cfg.patience is not None and state.stale >= cfg.patience:
                    self._log(f"early stop: no AUC gain in {cfg.patience} epochs")
                    break
        except KeyboardInterrupt:
            self._log(f"interrupted: {self.out / 'last.safetensors'} holds epoch {completed};"
                      " continue with --resume")
            return completed, True
        finally:
            self._loaders.clear()  # stops the loader workers
        return completed, False

    def _epoch(self, state: RunState, epoch: int) -> dict[str, Any]:
        """Train one epoch, validate, and update the best AUC: the epoch's metrics row."""
        self._set_stage(state.model, epoch)
        t0 = time.perf_counter()
        train_loss, n_seen = self._train_epoch(state, epoch)
        train_time = time.perf_counter() - t0
        sync_buffers(self.dist, state.model)  # validate (and save) rank 0's model everywhere
        val = self.evaluate(state.model, state.data.val, state.task)
        raw = None
        if state.ema is not None:  # the average is the model kept: it chooses best
            sync_buffers(self.dist, state.ema.module)
            raw, val = val, self.evaluate(state.ema.module, state.data.val, state.task)
        row = {
            "epoch": epoch,
            "train_loss": all_reduce_mean(self.dist, train_loss, n_seen),
            "val_loss": val["loss"],
            "val_auc": val["auc"],
            "val_f1": val["f1"],
            "val_threshold": val["threshold"],
            "lr": state.optimizer.param_groups[0]["lr"],
            "train_scans_per_s": n_seen * self.dist.world / max(train_time, 1e-9),
            "epoch_time_s": time.perf_counter() - t0,
        }
        if raw is not None:
            row.update(raw_val_loss=raw["loss"], raw_val_auc=raw["auc"], raw_val_f1=raw["f1"],
                       raw_val_threshold=raw["threshold"])
        state.history.append(row)
        auc = val["auc"] if val["auc"] is not None else -1.0
        row["improved"] = auc > state.best_auc
        state.best_auc, state.stale = ((auc, 0) if row["improved"]
                                       else (state.best_auc, state.stale + 1))
        return row

    def _record(self, state: RunState, row: dict[str, Any]) -> None:
        """Save the epoch: its metrics line, the best checkpoint when it improved, and last."""
        improved = row.pop("improved")
        self._save(state, epoch=row["epoch"], threshold=row["val_threshold"], best=improved,
                   raw_threshold=row.get("raw_val_threshold", row["val_threshold"]))

    def _summary(self, state: RunState, completed: int, interrupted: bool,
                 seconds: float) -> dict[str, Any]:
        best = (max(state.history, key=lambda r: r["val_auc"] or -1.0)
                if state.history else None)
        return {
            "out": str(self.out),
            "backbone": self.cfg.backbone,
            "epochs_run": completed,
            "epochs": state.epochs,
            "size": list(state.size),
            "precision": self.precision.name,
            "device": str(self.device),
            "best_epoch": best["epoch"] if best else None,
            "best_val_auc": best["val_auc"] if best else None,  # the split that chose the epoch
            "n_val": len(state.data.val),
            "best_val_f1": best["val_f1"] if best else None,
            "threshold": best["val_threshold"] if best else None,
            "train_time_s": seconds,
            "interrupted": interrupted,
            "classes": list(state.task.classes),
            "init": getattr(self, "init_report", None),
        }

    def _set_stage(self, model: nn.Module, epoch: int) -> None:
        """Staged fine-tuning: backbones frozen for --freeze-epochs, then the last K unfrozen.
        This sets what trains; `_train_epoch` puts the frozen layers in eval mode
        (`--frozen-bn eval`, the default)."""
        cfg = self.cfg
        if cfg.freeze_epochs <= 0:
            return
        target = fine_tunable(model)
        target.freeze_backbones()
        if epoch > cfg.freeze_epochs:
            target.unfreeze_last(cfg.unfreeze_last)

    def _train_epoch(self, state: RunState, epoch: int) -> tuple[float, int]:
        state.train_model.train()
        if self.cfg.freeze_epochs > 0 and self.cfg.frozen_bn == "eval":
            eval_frozen(fine_tunable(state.model))  # train() put the frozen layers back
        loader = self._loader(state.data.train, train=True, epoch=epoch)
        cuda_graphs = self.compile_mode in ("reduce-overhead", "max-autotune")
        # The loss is summed on the device. Reading it makes the host wait for the step before
        # queueing the next, so on a GPU the bar shows the running loss every LOSS_READ_S
        # seconds only (on the CPU a read costs nothing) and without a bar it is read once.
        total, seen = torch.zeros((), device=self.device), 0
        read_every = 0.0 if self.device.type == "cpu" else LOSS_READ_S
        with progress_bar(len(loader), f"epoch {epoch}/{state.epochs}",
                          enabled=not self.quiet and self.dist.main, rate_unit="scans",
                          rate_scale=self.cfg.batch_size * self.dist.world,
                          fields=("loss",)) as advance:
            last_read = time.monotonic()
            for batch, labels in loader:
                x, y = device_batch(batch, labels, self.device, self.channels_last_scans,
                                    state.augment, state.task)
                if state.mixer is not None:
                    x, y = state.mixer(x, y)  # soft targets: binary B x 1, else B x K
                try:
                    loss = train_step(state.train_model, x, y, state.optimizer, state.scaler,
                                      self.precision, cuda_graphs=cuda_graphs,
                                      loss_fn=state.task.loss)
                except ValueError as exc:
                    if BATCHNORM_NEEDS_TWO not in str(exc):
                        raise
                    raise BadInputError(
                        f"--batch-size {self.cfg.batch_size}: a training batch of {len(y)} "
                        f"scan leaves {self.cfg.backbone}'s BatchNorm layers one value per "
                        f"channel at {'x'.join(map(str, state.size))}; use --batch-size 2 or "
                        "more") from None
                state.scheduler.step()
                if state.ema is not None:
                    state.ema.update(state.model)  # after the optimizer step
                total += loss * len(y)
                seen += len(y)
                if advance.shown and time.monotonic() - last_read >= read_every:
                    advance(loss=f"loss {format_number(float(total) / seen)}")
                    last_read = time.monotonic()
                else:
                    advance()
        return float(total) / max(seen, 1), seen

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, dataset: Dataset, task: Task) -> dict[str, Any]:
        """Validation loss, AUC, and F1: binary, the AUC and the F1 at the Youden threshold of
        these predictions; multi-class, the macro one-vs-rest AUC and the macro F1 of the
        most probable class (no threshold)."""
        from .metrics import f1_covid, roc_auc, youden_threshold
        from .multiclass_metrics import macro_f1_argmax, macro_ovr_auc

        model.eval()
        loader = self._loader(dataset, train=False, epoch=0)
        indices = list(iter(loader.sampler))
        probs, labels, losses = [], [], []
        for batch, y in loader:
            x, yt = device_batch(batch, y, self.device, self.channels_last_scans, task=task)
            with self.precision.autocast(self.device.type):
                logits = model(x).float()
            losses.append(task.loss(logits, yt, reduction="none"))
            probs.append(task.probs(logits))
            labels.append(y)
        idx, p, t, lo = all_gather_arrays(  # one copy to the host, not one per batch
            self.dist, np.asarray(indices), torch.cat(probs).cpu().numpy(),
            torch.cat(labels).numpy(), torch.cat(losses).cpu().numpy(),
        )
        _, first = np.unique(idx, return_index=True)  # DistributedSampler pads with repeats
        p, t, lo = p[first], t[first].astype(np.int64), lo[first]
        if not task.binary:
            return {"loss": float(lo.mean()), "auc": macro_ovr_auc(t, p, len(task.classes)),
                    "threshold": None, "f1": macro_f1_argmax(t, p, len(task.classes)),
                    "probs": p, "labels": t}
        auc = roc_auc(t, p)
        threshold = youden_threshold(t, p) if auc is not None else 0.5
        return {"loss": float(lo.mean()), "auc": auc, "threshold": float(threshold),
                "f1": f1_covid(t, p, threshold), "probs": p, "labels": t}

    # -- checkpoints --

    def _save(self, state: RunState, *, epoch: int, threshold: float | None = None,
              best: bool = False, raw_threshold: float | None = None) -> None:
        """Save everything the run folder holds after `epoch` as one generation (see the module
        docstring): the configuration, the metrics so far, last with its resume state, and best
        (written anew when `best`, otherwise taken over from the previous generation)."""
        spec = replace(state.spec, threshold=threshold)
        # With --ema, best and ema.safetensors hold the average (`threshold` is its), last the
        # raw weights --resume continues, with their own threshold.
        last_spec = spec if state.ema is None else replace(state.spec, threshold=raw_threshold)
        kept = state.model if state.ema is None else state.ema.module

        def write(folder: Path) -> None:
            (folder / "config.json").write_text(
                json.dumps(self._resolved_config(state), indent=2))
            (folder / "metrics.jsonl").write_text(
                "".join(json.dumps(row) + "\n" for row in state.history))
            if state.data.records is not None:
                write_split_csv(state.data.records, folder / "split.csv")
            if best:
                save_checkpoint(folder / "best.safetensors", kept, spec)
            save_checkpoint(folder / "last.safetensors", state.model, last_spec)
            if state.ema is not None:
                save_checkpoint(folder / "ema.safetensors", state.ema.module, spec)
            kill_point("weights", epoch)
            save_state(folder / "last.safetensors", {
                "epoch": epoch, "best_auc": state.best_auc, "stale": state.stale,
                "optimizer": state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict(),
                "rng": rng_state(),
                "augment": state.augment.state_dict() if state.augment is not None else None,
                "mixer": state.mixer.state_dict() if state.mixer is not None else None,
                "ema": (None if state.ema is None else  # its weights: ema.safetensors
                        {k: v for k, v in state.ema.state_dict().items() if k != "weights"}),
            })

        carry = () if best or not state.has_best else ("best.safetensors",)
        self._link(self.generations.commit(epoch, write, carry=carry))
        state.has_best = state.has_best or best

    def _restore(self, state: RunState, generation: Generation) -> None:
        """Load the saved generation into `state` (--resume): the model, the optimizer,
        schedule, scaler, augmentation and RNG states, the metrics so far."""
        from safetensors.torch import load_file

        last = generation.path / "last.safetensors"
        saved = load_state(last)
        try:
            state.model.load_state_dict(load_file(str(last), device=str(self.device)))
        except RuntimeError as exc:
            raise BadInputError(f"--resume: {last} does not fit this model ({one_line(exc)})"
                                ) from None
        saved_json = state_paths(last)[1]
        try:
            state.optimizer.load_state_dict(saved["optimizer"])
            state.scheduler.load_state_dict(saved["scheduler"])
            if saved["scaler"]:
                state.scaler.load_state_dict(saved["scaler"])
            if state.augment is not None and saved.get("augment"):
                state.augment.load_state_dict(saved["augment"])
            if state.mixer is not None:
                state.mixer.load_state_dict(saved["mixer"])
            if state.ema is not None:
                if "ema.safetensors" not in generation:
                    raise BadInputError(f"--resume: {generation.path} holds no ema.safetensors")
                state.ema.load_state_dict({**saved["ema"], "weights": load_file(
                    str(generation.path / "ema.safetensors"), device=str(self.device))})
            set_rng_state(saved["rng"])
            state.start_epoch = int(saved["epoch"]) + 1
            state.best_auc, state.stale = float(saved["best_auc"]), int(saved["stale"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise BadInputError(f"--resume: {saved_json} does not fit this run "
                                f"({one_line(exc)})") from None
        if state.start_epoch - 1 != generation.label:
            raise BadInputError(f"--resume: {saved_json} is of epoch "
                                f"{state.start_epoch - 1}, its generation of {generation.label}")
        state.history = read_metrics(generation.path / "metrics.jsonl", generation.label)
        state.has_best = "best.safetensors" in generation


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """config.json's keys, the model spec's spread out as `model.KEY` (so that a difference is
    named precisely and the spec's provenance may change)."""
    flat = {k: v for k, v in config.items() if k != "model"}
    model = config.get("model")
    if isinstance(model, dict):
        flat.update({f"model.{k}": v for k, v in model.items()})
    elif model is not None:
        flat["model"] = model
    return flat


def read_metrics(path: Path, epochs: int) -> list[dict[str, Any]]:
    """The metrics rows of epochs 1..`epochs` in a saved metrics.jsonl, each checked."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: unreadable ({exc})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or row.get("epoch") != number:
                raise ValueError(f"not the row of epoch {number}")
        except ValueError as exc:
            raise BadInputError(f"{path}: line {number} is corrupt ({exc})") from None
        rows.append(row)
    if len(rows) != epochs:
        raise BadInputError(f"{path}: {len(rows)} rows for {epochs} epochs")
    return rows


def train(cfg: TrainConfig, quiet: bool = False, keep_distributed: bool = False
          ) -> dict[str, Any]:
    """Run one training job and return its summary. Under torchrun the process group is left
    at the end, unless `keep_distributed` (cross-validation trains its folds in one group:
    joining torchrun's group anew for every fold can hang)."""
    finished = False
    try:
        summary = Trainer(cfg, quiet=quiet).run()
        if not keep_distributed:
            shutdown_distributed(together=True)
        finished = True
        return summary
    except torch.cuda.OutOfMemoryError as exc:
        raise CovidzooError(
            f"out of GPU memory at --batch-size {cfg.batch_size}; try a smaller batch or --size"
        ) from exc
    finally:
        if not (finished and keep_distributed):
            shutdown_distributed(together=False)
