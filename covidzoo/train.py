"""The training loop: mixed precision, GPU augmentation, checkpoints, resume, early stopping, DDP.

`train(TrainConfig(...))` is what `covidzoo train` runs. A run folder holds:

    config.json          the full resolved configuration
    metrics.jsonl        one JSON line per epoch
    best.safetensors     the model of the best validation AUC (with its Youden threshold)
    last.safetensors     the model after the last finished epoch, plus last.state.* for --resume

Only whole epochs are checkpointed, so `--resume` after Ctrl-C continues exactly where an
uninterrupted run would be: the sampler order, augmentation and dropout are all seeded per epoch
or restored from the saved RNG state.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import __version__, get_component
from .amp import Precision, resolve_device, resolve_precision, tune_cudnn
from .augment import AugmentConfig, ScanAugment, device_batch
from .checkpoint import (
    ModelSpec,
    load_state,
    read_spec,
    save_checkpoint,
    save_state,
    unwrap_model,
)
from .errors import BadInputError, CovidzooError
from .fileio import atomic_write_text

if TYPE_CHECKING:
    from .data import CachedScans

# What the demo (no --data) trains on: small enough for a 2-core CPU in a few minutes.
DEMO_SIZE = (32, 64, 64)
DEMO_EPOCHS = 12
DEFAULT_SIZE_3D = (64, 224, 224)
DEFAULT_DEPTH_2D = 64


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
    epochs: int | None = None
    batch_size: int = 4
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: int = 1
    pos_weight: float | None = None
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    augment: bool = True
    freeze_epochs: int = 0
    unfreeze_last: int = 0
    val_split: float | None = None
    seed: int = 0
    out: str | None = None
    resume: bool = False
    device: str | None = None
    workers: int | None = None  # None: 0 on CPU, several on CUDA (see default_workers)
    patience: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- distributed helpers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Dist:
    """Join the process group torchrun describes in the environment (or run alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as tdist

    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=tdist.get_rank(), world=tdist.get_world_size())


def all_gather_arrays(dist: Dist, *arrays: np.ndarray) -> list[np.ndarray]:
    """Concatenate per-rank arrays on every rank (validation predictions)."""
    if dist.world == 1:
        return list(arrays)
    import torch.distributed as tdist

    gathered: list[Any] = [None] * dist.world
    tdist.all_gather_object(gathered, [a.tolist() for a in arrays])
    return [np.concatenate([np.asarray(g[i]) for g in gathered]) for i in range(len(arrays))]


def barrier(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()


def all_reduce_mean(dist: Dist, value: float, count: int) -> float:
    if dist.world == 1:
        return value
    import torch.distributed as tdist

    t = torch.tensor([value * count, float(count)], dtype=torch.float64)
    tdist.all_reduce(t)
    return float(t[0] / max(t[1], 1.0))


# --- data ---------------------------------------------------------------------------------------


@dataclass
class Data:
    train: CachedScans
    val: CachedScans
    preprocess: dict[str, Any]
    source: str


def resolve_size(cfg: TrainConfig) -> tuple[int, int, int]:
    """The scan size: --size, else the demo size, else the backbone's default input size."""
    if cfg.size is not None:
        return tuple(cfg.size)  # type: ignore[return-value]
    if cfg.data is None and cfg.manifest is None and cfg.cache is None:
        return DEMO_SIZE
    meta = get_component(cfg.backbone).metadata
    input_size = tuple(meta.get("input_size") or DEFAULT_SIZE_3D)
    if meta.get("spatial_dims") == 2:
        return (DEFAULT_DEPTH_2D, *input_size[-2:])  # type: ignore[return-value]
    return input_size  # type: ignore[return-value]


def load_data(
    cfg: TrainConfig, size: tuple[int, int, int], quiet: bool, prepare: bool = True
) -> Data:
    """Train and validation datasets from the cache, preparing it first when `prepare`."""
    from .data import (
        CachedScans,
        PreprocessConfig,
        cache_dir_for,
        demo_data,
        find_scans,
        prepare_cache,
    )

    if cfg.cache is not None:
        cache_dir = Path(cfg.cache)
        train, val = CachedScans(cache_dir, split="train"), CachedScans(cache_dir, split="val")
        return Data(train, val, train.config.to_dict(), str(cache_dir))
    if cfg.data is None and cfg.manifest is None:
        root, source = demo_data(), "demo"
    else:
        root, source = cfg.data, str(Path(cfg.data or cfg.manifest).resolve())
    records = find_scans(root=root, manifest=cfg.manifest, val_split=cfg.val_split, seed=cfg.seed)
    preprocess = PreprocessConfig(size=size)
    cache_dir = cache_dir_for(Path(root or cfg.manifest).resolve(), preprocess)
    if not prepare:  # another rank prepared it
        train, val = CachedScans(cache_dir, split="train"), CachedScans(cache_dir, split="val")
        return Data(train, val, preprocess.to_dict(), source)
    result = prepare_cache(records, cache_dir, preprocess, workers=max(cfg.workers or 1, 1),
                           progress=not quiet)
    if result.failed and not quiet:
        print(f"covidzoo: {len(result.failed)} scan(s) failed to read and were skipped",
              file=sys.stderr)
    train, val = CachedScans(cache_dir, split="train"), CachedScans(cache_dir, split="val")
    return Data(train, val, preprocess.to_dict(), source)


def check_data(data: Data, batch_size: int) -> None:
    n_train = len(data.train)
    if n_train == 0:
        raise BadInputError(f"no training scans found in {data.source}")
    if len(data.val) == 0:
        raise BadInputError(
            f"no validation scans in {data.source}; give a val split or --val-split"
        )
    if len(set(data.train.labels)) < 2:
        raise BadInputError(f"the training scans of {data.source} hold one class only")
    if batch_size > n_train:
        raise BadInputError(
            f"--batch-size {batch_size} is larger than the {n_train} training scans"
        )


# --- schedule -----------------------------------------------------------------------------------


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """Multiplier of the base learning rate at optimizer step `step` of `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if schedule == "step":  # /10 at half and at three quarters of the run
        return 0.1 ** (int(progress >= 0.5) + int(progress >= 0.75))
    if schedule == "none":
        return 1.0
    raise BadInputError(f"unknown --schedule '{schedule}'; choose from cosine, step, none")


# --- the run ------------------------------------------------------------------------------------


def default_out(backbone: str) -> str:
    return str(Path("runs") / f"{backbone}-{time.strftime('%Y%m%d-%H%M%S')}")


def fine_tunable(model: nn.Module) -> Any:
    """The module with the staged fine-tuning API (`freeze_backbones`, `unfreeze_last`): the
    model itself or the backbone inside its aggregator; None when there is none."""
    model = unwrap_model(model)
    for candidate in (model, getattr(model, "backbone", None)):
        if hasattr(candidate, "freeze_backbones"):
            return candidate
    return None


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1],
        "numpy_pos": int(np.random.get_state()[2]),
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"], state["numpy_pos"], 0, 0.0))
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def default_workers(device: torch.device) -> int:
    """Loader processes when --workers is not given: none on CPU, where the model step needs
    every core, and up to 8 on CUDA, where the GPU must never wait for the next batch, sharing
    the cores with the other processes torchrun started on this machine."""
    if device.type != "cuda":
        return 0
    cores = (os.cpu_count() or 2) // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(1, min(8, cores - 1))


def training_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device, *,
                    seed: int = 0, shuffle: bool = True, drop_last: bool = True,
                    dist: Dist | None = None) -> DataLoader:
    """The loader of a training run, kept for the whole run: call `loader.sampler.set_epoch(e)`
    before each epoch. Its workers persist between epochs (starting them again each epoch would
    stall the GPU) and it pins memory on CUDA, for asynchronous copies.

    The order is a function of (seed, epoch) alone, so a resumed run reads what an uninterrupted
    one would. `DistributedSampler` gives it, for a single process too.
    """
    from torch.utils.data.distributed import DistributedSampler

    dist = dist or Dist()
    sampler = DistributedSampler(dataset, num_replicas=dist.world, rank=dist.rank,
                                 shuffle=shuffle, seed=seed, drop_last=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=drop_last,
                      persistent_workers=workers > 0)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: Any, scaler: Any,
               precision: Precision, *, cuda_graphs: bool = False,
               pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """One optimizer step on a device batch; returns the loss, detached and not yet read.

    Nothing here waits for the device, so the host queues the next batch's copy and augmentation
    while this step runs (with fp16, the `GradScaler` skips its host-side check only for
    optimizers that take the scale themselves: the fused ones and NovoGrad, see `covidzoo.optim`).
    `covidzoo bench` times this same function.
    """
    if cuda_graphs:  # a new iteration: CUDA-graph outputs of the last one may be overwritten
        torch.compiler.cudagraph_mark_step_begin()
    with precision.autocast(x.device.type):
        logits = model(x)
    loss = F.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=pos_weight)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One training run. `run()` returns the summary dict printed at the end."""

    def __init__(self, cfg: TrainConfig, quiet: bool = False) -> None:
        self.cfg = cfg
        self.quiet = quiet
        if cfg.epochs is not None and cfg.epochs < 1:
            raise BadInputError("--epochs must be at least 1")
        self.device = resolve_device(cfg.device)
        self.dist = setup_distributed(self.device)
        if self.dist.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        tune_cudnn(self.device)
        self.workers = default_workers(self.device) if cfg.workers is None else cfg.workers
        self._loaders: dict[int, tuple[Dataset, DataLoader]] = {}
        self.precision: Precision = resolve_precision(
            cfg.precision, self.device, cfg.backbone, "train", cfg.channels_last
        )
        get_component(cfg.optimizer, "optimizer")  # fail early on an unknown optimizer
        lr_factor(cfg.schedule, 0, 1, 0)
        # Channels-last scans only for 3D models: a slice model's input is reshaped to slices.
        self.channels_last_scans = self.precision.channels_last and (
            get_component(cfg.backbone).metadata.get("spatial_dims") == 3
        )
        self.out = Path(cfg.out or self._shared(default_out(cfg.backbone)))
        self._check_out()
        barrier(self.dist)  # every rank has checked the run folder before rank 0 writes to it

    # -- set-up --

    def _shared(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (e.g. a time-stamped run folder name)."""
        if self.dist.world == 1:
            return value
        import torch.distributed as tdist

        box = [value]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def _check_out(self) -> None:
        last = self.out / "last.safetensors"
        if self.cfg.resume:
            if not last.is_file():
                raise BadInputError(f"--resume: no {last} to resume from")
            spec = read_spec(last)
            if spec.backbone != self.cfg.backbone:
                raise BadInputError(
                    f"--resume: {last} holds a '{spec.backbone}' model, not '{self.cfg.backbone}'"
                )
        elif self.out.exists() and any(self.out.iterdir()):
            raise BadInputError(
                f"{self.out} already holds a run; pass --resume or choose another --out"
            )

    def _log(self, message: str) -> None:
        if self.dist.main and not self.quiet:
            print(message, file=sys.stderr)

    def _loader(self, dataset: Dataset, train: bool, epoch: int) -> DataLoader:
        """The run's loader of `dataset` (one per data set, see `training_loader`) at `epoch`."""
        if id(dataset) not in self._loaders:
            loader = training_loader(
                dataset, self.cfg.batch_size, self.workers, self.device, seed=self.cfg.seed,
                shuffle=train, dist=self.dist,
                drop_last=train and len(dataset) > self.cfg.batch_size,  # type: ignore[arg-type]
            )
            self._loaders[id(dataset)] = (dataset, loader)  # the data set kept: ids stay unique
        loader = self._loaders[id(dataset)][1]
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        return loader

    def _build_model(self, preprocess: dict[str, Any]) -> tuple[nn.Module, ModelSpec]:
        from . import default_aggregator

        cfg = self.cfg
        spec = ModelSpec(
            backbone=cfg.backbone,
            model_args={"in_chans": 1, "num_classes": 1, **cfg.model_args},
            aggregator=(
                default_aggregator(cfg.backbone) if cfg.aggregator == "auto" else cfg.aggregator
            ),
            aggregator_args=dict(cfg.aggregator_args),
            preprocess=preprocess,
        )
        model = spec.build().to(self.device)
        if self.precision.channels_last:
            model = model.to(memory_format=torch.channels_last_3d if self.channels_last_scans
                             else torch.channels_last)
        return model, spec

    # -- the loop --

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        seed_everything(cfg.seed)
        size = resolve_size(cfg)
        epochs = cfg.epochs or (DEMO_EPOCHS if cfg.data is None and cfg.manifest is None
                                and cfg.cache is None else 30)
        # Rank 0 prepares the cache; the others open it once it is complete.
        if self.dist.main:
            data = load_data(cfg, size, quiet=self.quiet)
        barrier(self.dist)
        if not self.dist.main:
            data = load_data(cfg, size, quiet=True, prepare=False)
        check_data(data, cfg.batch_size)
        model, spec = self._build_model(data.preprocess)
        if cfg.freeze_epochs > 0 and fine_tunable(model) is None:
            raise BadInputError(f"--freeze-epochs: '{cfg.backbone}' has no staged fine-tuning")
        optimizer = get_component(cfg.optimizer, "optimizer").create(
            params=[p for p in model.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        steps_per_epoch = max(len(data.train) // (cfg.batch_size * self.dist.world), 1)
        total_steps = steps_per_epoch * epochs
        warmup_steps = steps_per_epoch * cfg.warmup_epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(cfg.schedule, s, total_steps, warmup_steps)
        )
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.use_scaler)
        augment = ScanAugment(AugmentConfig(), seed=cfg.seed) if cfg.augment else None
        pos_weight = None if cfg.pos_weight is None else torch.tensor([cfg.pos_weight],
                                                                       device=self.device)
        start_epoch, best_auc, stale = 1, -1.0, 0
        history: list[dict[str, Any]] = []
        if cfg.resume:
            start_epoch, best_auc, stale, history = self._restore(
                model, optimizer, scheduler, scaler, augment
            )
        train_model: nn.Module = model
        if self.dist.world > 1:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.compile_mode = self.precision.compile_mode or ("default" if cfg.compile else None)
        if self.compile_mode is not None:
            train_model = torch.compile(train_model, mode=self.compile_mode)  # type: ignore

        resolved = {**cfg.to_dict(), "size": list(size), "epochs": epochs, "out": str(self.out),
                    "precision_resolved": self.precision.name,
                    "channels_last_resolved": self.precision.channels_last,
                    "compile_mode_resolved": self.compile_mode,
                    "workers_resolved": self.workers,
                    "device": str(self.device), "world_size": self.dist.world,
                    "model": spec.to_dict(), "augment_config": AugmentConfig().to_dict(),
                    "data_source": data.source, "n_train": len(data.train),
                    "n_val": len(data.val), "covidzoo_version": __version__}
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.json", json.dumps(resolved, indent=2))
            if not cfg.resume:
                with interrupts_deferred():
                    self._save_last(model, spec, optimizer, scheduler, scaler, augment,
                                    epoch=0, best_auc=best_auc, stale=stale)
        self._log(
            f"training {cfg.backbone} on {data.source}: {len(data.train)} train / "
            f"{len(data.val)} val scans of {'x'.join(map(str, size))}, {epochs} epochs, "
            f"{self.precision.name} on {self.device}"
        )
        started = time.perf_counter()
        interrupted = False
        completed = start_epoch - 1  # the last epoch whose checkpoint is on disk
        try:
            for epoch in range(start_epoch, epochs + 1):
                self._set_stage(model, epoch)
                t0 = time.perf_counter()
                train_loss, n_seen = self._train_epoch(
                    train_model, data.train, optimizer, scheduler, scaler, augment, pos_weight,
                    epoch, epochs,
                )
                train_time = time.perf_counter() - t0
                val = self.evaluate(model, data.val, pos_weight)
                row = {
                    "epoch": epoch,
                    "train_loss": all_reduce_mean(self.dist, train_loss, n_seen),
                    "val_loss": val["loss"],
                    "val_auc": val["auc"],
                    "val_f1": val["f1"],
                    "val_threshold": val["threshold"],
                    "lr": optimizer.param_groups[0]["lr"],
                    "train_scans_per_s": n_seen * self.dist.world / max(train_time, 1e-9),
                    "epoch_time_s": time.perf_counter() - t0,
                }
                history.append(row)
                auc = val["auc"] if val["auc"] is not None else -1.0
                improved = auc > best_auc
                best_auc, stale = (auc, 0) if improved else (best_auc, stale + 1)
                if self.dist.main:
                    with interrupts_deferred():
                        with (self.out / "metrics.jsonl").open("a") as fh:
                            fh.write(json.dumps(row) + "\n")
                        if improved:
                            spec.threshold = val["threshold"]
                            save_checkpoint(self.out / "best.safetensors", model, spec)
                        self._save_last(model, spec, optimizer, scheduler, scaler, augment,
                                        epoch=epoch, best_auc=best_auc, stale=stale,
                                        threshold=val["threshold"])
                        completed = epoch  # before a deferred Ctrl-C is raised
                completed = epoch
                self._log(
                    f"epoch {epoch}/{epochs}  train loss {row['train_loss']:.4f}  "
                    f"val loss {row['val_loss']:.4f}  val AUC {_fmt(row['val_auc'])}  "
                    f"F1 {_fmt(row['val_f1'])}  {row['train_scans_per_s']:.1f} scans/s"
                )
                if cfg.patience is not None and stale >= cfg.patience:
                    self._log(f"early stop: no AUC gain in {cfg.patience} epochs")
                    break
        except KeyboardInterrupt:
            interrupted = True
            self._log(f"interrupted: {self.out / 'last.safetensors'} holds epoch {completed};"
                      " continue with --resume")
        finally:
            self._loaders.clear()  # stops the loader workers
        best = max(history, key=lambda r: r["val_auc"] or -1.0) if history else None
        return {
            "out": str(self.out),
            "backbone": cfg.backbone,
            "epochs_run": completed,
            "epochs": epochs,
            "size": list(size),
            "precision": self.precision.name,
            "device": str(self.device),
            "best_epoch": best["epoch"] if best else None,
            "best_val_auc": best["val_auc"] if best else None,
            "best_val_f1": best["val_f1"] if best else None,
            "threshold": best["val_threshold"] if best else None,
            "train_time_s": time.perf_counter() - started,
            "interrupted": interrupted,
        }

    def _set_stage(self, model: nn.Module, epoch: int) -> None:
        """Staged fine-tuning: backbones frozen for --freeze-epochs, then the last K unfrozen."""
        cfg = self.cfg
        if cfg.freeze_epochs <= 0:
            return
        target = fine_tunable(model)
        target.freeze_backbones()
        if epoch > cfg.freeze_epochs:
            target.unfreeze_last(cfg.unfreeze_last)

    def _train_epoch(
        self, model: nn.Module, dataset: Dataset, optimizer: Any, scheduler: Any, scaler: Any,
        augment: ScanAugment | None, pos_weight: torch.Tensor | None, epoch: int, epochs: int,
    ) -> tuple[float, int]:
        model.train()
        loader = self._loader(dataset, train=True, epoch=epoch)
        cuda_graphs = self.compile_mode in ("reduce-overhead", "max-autotune")
        # The loss is summed on the device and read once per epoch: reading it every step
        # would make the host wait for each step before queueing the next.
        total, seen = torch.zeros((), device=self.device), 0
        with self._progress(len(loader), f"epoch {epoch}/{epochs}") as advance:
            for batch, labels in loader:
                x, y = device_batch(batch, labels, self.device, self.channels_last_scans, augment)
                loss = train_step(model, x, y, optimizer, scaler, self.precision,
                                  cuda_graphs=cuda_graphs, pos_weight=pos_weight)
                scheduler.step()
                total += loss * len(y)
                seen += len(y)
                advance()
        return float(total) / max(seen, 1), seen

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, dataset: Dataset,
                 pos_weight: torch.Tensor | None) -> dict[str, Any]:
        """Validation loss, AUC, and F1 at the Youden threshold of these predictions."""
        from .metrics import f1_covid, roc_auc, youden_threshold

        model.eval()
        loader = self._loader(dataset, train=False, epoch=0)
        indices = list(iter(loader.sampler))
        probs, labels, losses = [], [], []
        for batch, y in loader:
            x, yt = device_batch(batch, y, self.device, self.channels_last_scans)
            with self.precision.autocast(self.device.type):
                logits = model(x).float()
            losses.append(F.binary_cross_entropy_with_logits(
                logits, yt, pos_weight=pos_weight, reduction="none").view(-1))
            probs.append(torch.sigmoid(logits).view(-1))
            labels.append(y)
        idx, p, t, lo = all_gather_arrays(  # one copy to the host, not one per batch
            self.dist, np.asarray(indices), torch.cat(probs).cpu().numpy(),
            torch.cat(labels).numpy(), torch.cat(losses).cpu().numpy(),
        )
        _, first = np.unique(idx, return_index=True)  # DistributedSampler pads with repeats
        p, t, lo = p[first], t[first].astype(np.int64), lo[first]
        auc = roc_auc(t, p)
        threshold = youden_threshold(t, p) if auc is not None else 0.5
        return {"loss": float(lo.mean()), "auc": auc, "threshold": float(threshold),
                "f1": f1_covid(t, p, threshold), "probs": p, "labels": t}

    @contextmanager
    def _progress(self, total: int, description: str) -> Iterator[Callable[[], None]]:
        if self.quiet or not self.dist.main or not sys.stderr.isatty():
            yield lambda: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeRemainingColumn(), transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield lambda: progress.advance(task)

    # -- checkpoints --

    def _save_last(self, model: nn.Module, spec: ModelSpec, optimizer: Any, scheduler: Any,
                   scaler: Any, augment: ScanAugment | None, *, epoch: int, best_auc: float,
                   stale: int, threshold: float | None = None) -> None:
        last = self.out / "last.safetensors"
        spec_last = replace(spec, threshold=threshold)
        # The state first: a last.safetensors always has the state of its own epoch beside it.
        save_state(last, {
            "epoch": epoch, "best_auc": best_auc, "stale": stale,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng_state(),
            "augment": augment.state_dict() if augment is not None else None,
        })
        save_checkpoint(last, model, spec_last)

    def _restore(self, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any,
                 augment: ScanAugment | None) -> tuple[int, float, int, list[dict[str, Any]]]:
        from safetensors.torch import load_file

        last = self.out / "last.safetensors"
        state = load_state(last)
        try:
            model.load_state_dict(load_file(str(last), device=str(self.device)))
        except RuntimeError as exc:
            raise BadInputError(f"--resume: {last} does not fit this model ({exc})") from exc
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        if augment is not None and state.get("augment"):
            augment.load_state_dict(state["augment"])
        set_rng_state(state["rng"])
        history = []
        metrics = self.out / "metrics.jsonl"
        if metrics.is_file():
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line]
            history = [r for r in rows if r["epoch"] <= state["epoch"]]
            if self.dist.main and len(history) != len(rows):  # drop epochs after the checkpoint
                atomic_write_text(metrics, "".join(json.dumps(r) + "\n" for r in history))
        return int(state["epoch"]) + 1, float(state["best_auc"]), int(state["stale"]), history


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C back until the block is done: a checkpoint and its resume state are written
    together or not at all. Outside the main thread (where signals cannot be caught) a no-op."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda *args: received.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def train(cfg: TrainConfig, quiet: bool = False) -> dict[str, Any]:
    """Run one training job and return its summary."""
    try:
        summary = Trainer(cfg, quiet=quiet).run()
        shutdown_distributed(together=True)
        return summary
    except torch.cuda.OutOfMemoryError as exc:
        raise CovidzooError(
            f"out of GPU memory at --batch-size {cfg.batch_size}; try a smaller batch or --size"
        ) from exc
    finally:
        shutdown_distributed(together=False)


def shutdown_distributed(together: bool) -> None:
    """Leave the process group; `together` waits for every rank first, so a rank exiting early
    cannot abort the others' gloo connections. After an error, leave at once."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        if together:
            tdist.barrier()
        tdist.destroy_process_group()
