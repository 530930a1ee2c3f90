"""Res-Dense Net: two timm CNNs read the same CT slice; their feature maps are added.

After "Res-Dense Net for 3D Covid Chest CT-scan classification" (ResNet-101 + DenseNet-121):
each branch's last feature map goes through its own 1x1 convolution so both have the same
number of channels, the two maps are summed, globally pooled and classified by one linear layer.

Choices the paper leaves open, made here:

- Projection: 1x1 conv (no bias) + BatchNorm per branch, ReLU after the sum, as in a residual
  merge. BatchNorm puts both branches on the same scale so neither dominates the sum; the ReLU
  keeps the pooled map non-negative, which generalized-mean pooling needs.
- If the two maps differ in size (branches with different output strides), the second branch's
  projected map is resized to the first's with bilinear interpolation.
- Any pair of timm CNNs works (`backbones=("resnet18", "densenet121")`); a branch must give a
  `B x C x H x W` map from `forward_features`, which rules out vision transformers.

Pretrained weights are never downloaded: `pretrained_path` loads local safetensors files (see
`ResDense2D.load_branch_weights`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadInputError

DEFAULT_BACKBONES: tuple[str, str] = ("resnet101", "densenet121")
POOLS = ("avg", "gem")


class GeM(nn.Module):
    """Generalized-mean pooling: `(mean x^p)^(1/p)` over H, W with a learnable `p`.

    `p = 1` is average pooling and `p -> inf` max pooling; learning `p` lets the model choose
    (Radenovic et al., 2018). Computed in float32 so `x^p` cannot overflow under fp16 autocast.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.float()
        pooled = x.float().clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)
        return pooled.to(x.dtype)


def _pool(kind: str) -> nn.Module:
    if kind == "avg":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    if kind == "gem":
        return GeM()
    raise BadInputError(f"resdense2d pool '{kind}' is unknown; choose from {', '.join(POOLS)}")


def _split_names(value: str | Sequence[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(item).strip() for item in items if str(item).strip())


def parameterised_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """`(name, module)` of every submodule owning parameters itself, in registration order.

    These are the "layers" of staged fine-tuning: convolutions, norms, linears. For timm CNNs the
    registration order is the order of the forward pass, so the last entries are the deepest.
    """
    return [
        (name, m) for name, m in module.named_modules() if any(True for _ in m.parameters(False))
    ]


class ResDense2D(nn.Module):
    """Two timm CNN branches, 1x1 projections, sum, pooling, dropout and a linear head.

    Input `N x in_chans x H x W` slices, output `N x num_classes` logits. The timm model API is
    kept: `forward_features`, `forward_head(pre_logits=...)`, `get_classifier`,
    `reset_classifier`, `set_grad_checkpointing`, `num_features`, `num_classes`.
    """

    def __init__(
        self,
        backbones: str | Sequence[str] = DEFAULT_BACKBONES,
        num_classes: int = 1,
        in_chans: int = 1,
        proj_channels: int = 512,
        pool: str = "avg",
        drop_rate: float = 0.0,
        pretrained_path: str | Path | Sequence[str | Path] | None = None,
    ) -> None:
        super().__init__()
        import timm

        names = _split_names(backbones)
        if len(names) != 2:
            raise BadInputError(
                f"resdense2d needs two timm backbones, got {len(names)}: {', '.join(names)}"
            )
        for name in names:
            if not timm.is_model(name):
                raise BadInputError(f"resdense2d backbone '{name}' is not a timm model name")
        if proj_channels < 1:
            raise BadInputError(f"resdense2d proj_channels must be positive, got {proj_channels}")
        self.backbone_names = names
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = proj_channels
        self.drop_rate = drop_rate
        self.pool_type = pool
        self.branches = nn.ModuleList(
            timm.create_model(
                name, pretrained=False, num_classes=0, global_pool="", in_chans=in_chans
            )
            for name in names
        )
        self.projections = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(branch.num_features, proj_channels, 1, bias=False),
                nn.BatchNorm2d(proj_channels),
            )
            for branch in self.branches
        )
        self.act = nn.ReLU(inplace=True)
        self.global_pool = _pool(pool)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(proj_channels, num_classes) if num_classes > 0 else nn.Identity()
        # Whether the branches hold loaded weights: freezing random ones trains a random feature
        # extractor (`covidzoo train --freeze-epochs` warns).
        self.pretrained = False
        if pretrained_path is not None:
            self.load_branch_weights(pretrained_path)

    # --- the timm model API -------------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The merged feature map `N x num_features x h x w` (before pooling)."""
        merged: torch.Tensor | None = None
        for name, branch, project in zip(
            self.backbone_names, self.branches, self.projections, strict=True
        ):
            features = branch.forward_features(x)
            if features.ndim != 4:
                raise BadInputError(
                    f"resdense2d backbone '{name}' gives {features.ndim}-D features; "
                    "a branch must be a CNN giving N x C x H x W maps"
                )
            y = project(features)
            if merged is None:
                merged = y
            else:
                if y.shape[-2:] != merged.shape[-2:]:
                    y = F.interpolate(y, size=merged.shape[-2:], mode="bilinear")
                merged = merged + y
        assert merged is not None
        return self.act(merged)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, dropout, then the linear head; `pre_logits=True` stops before the head."""
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh head for `num_classes` (0: none), optionally with another pooling."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = _pool(global_pool)
            self.pool_type = global_pool
        self.head = (
            nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory inside both timm branches."""
        for branch in self.branches:
            branch.set_grad_checkpointing(enable)

    # --- staged fine-tuning (the paper: train the head first, then the last layers) -----------

    def _head_parameters(self) -> Iterator[nn.Parameter]:
        for name, p in self.named_parameters():
            if not name.startswith("branches."):
                yield p

    def freeze_backbones(self) -> None:
        """Freeze both timm branches; projections, pooling and head stay trainable.

        This sets `requires_grad` only: in training mode the BatchNorms of frozen layers would
        still normalise with batch statistics and update their running ones. `covidzoo train`
        puts frozen layers in eval mode after every `model.train()`
        (`covidzoo.loop.eval_frozen`); call that yourself in your own loop.
        """
        self.unfreeze_last(0)

    def unfreeze_last(self, n: int) -> None:
        """Make exactly the last `n` parameterised layers of each branch trainable.

        A layer is a module that owns parameters (conv, norm, linear): see
        `parameterised_layers`. Earlier layers are frozen, so calls do not accumulate:
        `unfreeze_last(0)` freezes the branches, a large `n` unfreezes them whole. Projections,
        pooling and head are always trainable.
        """
        if n < 0:
            raise BadInputError(f"unfreeze_last needs n >= 0, got {n}")
        for branch in self.branches:
            layers = parameterised_layers(branch)
            for i, (_, layer) in enumerate(layers):
                for p in layer.parameters(recurse=False):
                    p.requires_grad_(i >= len(layers) - n)
        for p in self._head_parameters():
            p.requires_grad_(True)

    def trainable_parameter_names(self) -> list[str]:
        """Names of the parameters an optimizer should update now, in model order."""
        return [name for name, p in self.named_parameters() if p.requires_grad]

    # --- local pretrained weights -------------------------------------------------------------

    def load_branch_weights(self, path: str | Path | Sequence[str | Path]) -> None:
        """Load local timm weights (safetensors) into the two branches; nothing is downloaded.

        Two conventions:

        - one file per branch, in branch order (a sequence of two paths, or one string
          `"a.safetensors,b.safetensors"`): each is a plain timm state dict of that
          architecture, such as the `model.safetensors` of a timm Hugging Face repository;
        - one file holding both: keys prefixed by the branch's timm name and a dot, e.g.
          `resnet101.conv1.weight` and `densenet121.features.conv0.weight`.

        Classifier weights in the files are ignored. A 3-channel first convolution is adapted
        to `in_chans` as timm does for pretrained weights (summed for 1 channel). A missing,
        unexpected or wrongly shaped tensor raises `BadInputError` naming file and key.
        """
        from safetensors.torch import load_file

        if isinstance(path, str):
            paths = [Path(p) for p in _split_names(path)]
        elif isinstance(path, Path):
            paths = [path]
        else:
            paths = [Path(p) for p in path]
        for p in paths:
            if not p.is_file():
                raise BadInputError(f"resdense2d pretrained_path '{p}' is not a file")
        if len(paths) == 1:
            everything = load_file(str(paths[0]))
            states = []
            for name in self.backbone_names:
                prefix = f"{name}."
                state = {k[len(prefix):]: v for k, v in everything.items() if k.startswith(prefix)}
                if not state:
                    raise BadInputError(
                        f"resdense2d pretrained_path '{paths[0]}' has no key starting with "
                        f"'{prefix}'; give one file per branch or prefix keys by backbone name"
                    )
                states.append(state)
            sources = [paths[0], paths[0]]
        elif len(paths) == len(self.branches):
            states = [load_file(str(p)) for p in paths]
            sources = paths
        else:
            raise BadInputError(
                f"resdense2d pretrained_path names {len(paths)} files; give 1 or 2"
            )
        for branch, state, source in zip(self.branches, states, sources, strict=True):
            self._load_branch(branch, state, source)
        self.pretrained = True

    def _load_branch(self, branch: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
        from timm.models import adapt_input_conv

        cfg = getattr(branch, "pretrained_cfg", {}) or {}
        classifier = cfg.get("classifier")
        if classifier:
            state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
        first_conv = cfg.get("first_conv")
        key = f"{first_conv}.weight"
        weight = state.get(key) if first_conv else None
        if weight is not None and weight.ndim == 4 and weight.shape[1] != self.in_chans:
            state[key] = adapt_input_conv(self.in_chans, weight, weight.shape[1])
        own = branch.state_dict()
        # Files saved without BatchNorm's `num_batches_tracked` load fine: torch fills it in.
        missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            which, names = ("missing", missing) if missing else ("unexpected", unexpected)
            raise BadInputError(
                f"resdense2d weights '{source}' do not fit {type(branch).__name__}: "
                f"{len(names)} {which} key(s), first '{names[0]}'"
            )
        for k, v in state.items():
            if v.shape != own[k].shape:
                raise BadInputError(
                    f"resdense2d weights '{source}' do not fit: '{k}' has shape "
                    f"{tuple(v.shape)}, the model needs {tuple(own[k].shape)}"
                )
        branch.load_state_dict(state)


def resdense2d(**kwargs) -> ResDense2D:
    """Res-Dense Net: ResNet-101 + DenseNet-121 features added, pooled, linear head (2D slices)."""
    return ResDense2D(**kwargs)
