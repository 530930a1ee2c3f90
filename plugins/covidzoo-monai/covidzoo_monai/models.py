"""covidzoo-monai: MONAI's 3D classifiers with timm's model API, imported only when one is built.

Each class subclasses the MONAI network itself, so the parameter names (the `state_dict` keys)
are MONAI's own and weights trained with plain MONAI load unchanged. The subclass adds what
covidzoo and timm users expect:

- `num_classes`, `in_chans`, `num_features` attributes;
- `forward_features(x)`: the last feature map, `B x num_features x d x h x w`;
- `forward_head(x, pre_logits=False)`: pooling (and dropout where the network has it), then the
  linear classifier, or the pooled features with `pre_logits=True`;
- `get_classifier()`, `reset_classifier(num_classes)`; `num_classes=0` gives no classifier, so
  the model returns pooled features (timm's rule);
- a clear `BadInputError` for an input smaller than the network can pool (`min_input_size`).

Not supported: `set_grad_checkpointing` and `global_pool` choices (MONAI has neither), and
pretrained weights: `pretrained=True` is refused, nothing is ever downloaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from covidzoo.errors import BadInputError

from . import MIN_INPUT_SIZES

try:
    from monai.networks import nets
    from monai.networks.nets.resnet import get_inplanes
except ImportError as exc:  # the registry reports this as "backbone '...' is unavailable: ..."
    raise ImportError(
        f"covidzoo-monai needs MONAI ({exc}); install it with `pip install monai`"
    ) from exc


class TimmApi:
    """timm's model API over a MONAI classifier. Subclasses name the head and the pooling."""

    covidzoo_name: str
    num_classes: int
    num_features: int
    in_chans: int

    def _set_up(self, num_classes: int, in_chans: int) -> None:
        """Record the sizes after MONAI built the network, and drop the head for 0 classes."""
        self.in_chans = in_chans
        self.num_features = self.get_classifier().in_features
        self.reset_classifier(num_classes)

    @property
    def min_input_size(self) -> tuple[int, int, int]:
        return MIN_INPUT_SIZES[self.covidzoo_name]

    def _check_input(self, x: torch.Tensor) -> None:
        smallest = self.min_input_size
        if x.ndim == 5 and any(s < m for s, m in zip(x.shape[2:], smallest, strict=True)):
            raise BadInputError(
                f"{self.covidzoo_name} needs D, H and W of at least"
                f" {'x'.join(map(str, smallest))}; got {'x'.join(map(str, x.shape[2:]))}"
            )

    def get_classifier(self) -> nn.Module:
        raise NotImplementedError

    def _set_classifier(self, head: nn.Module) -> None:
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised linear classifier (none for `num_classes=0`)."""
        self.num_classes = num_classes
        self._set_classifier(
            nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class DenseNet121(TimmApi, nets.DenseNet121):
    """MONAI DenseNet-121 (3D); the head is `class_layers` (ReLU, pool, flatten, `out`)."""

    covidzoo_name = "monai-densenet121"

    def __init__(self, num_classes: int = 1, in_chans: int = 1, **kwargs: Any) -> None:
        super().__init__(
            spatial_dims=3, in_channels=in_chans, out_channels=max(num_classes, 1), **kwargs
        )
        self._set_up(num_classes, in_chans)

    def get_classifier(self) -> nn.Module:
        return self.class_layers.out

    def _set_classifier(self, head: nn.Module) -> None:
        self.class_layers.out = head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        head = self.class_layers
        x = head.flatten(head.pool(head.relu(x)))
        return x if pre_logits else head.out(x)


class ResNet(TimmApi, nets.ResNet):
    """MONAI ResNet (3D); the head is `fc` after global average pooling."""

    def __init__(
        self, name: str, num_classes: int = 1, in_chans: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(
            spatial_dims=3, n_input_channels=in_chans, num_classes=max(num_classes, 1), **kwargs
        )
        self.covidzoo_name = name
        self._set_up(num_classes, in_chans)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def _set_classifier(self, head: nn.Module) -> None:
        self.fc = head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        x = self.act(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            x = self.maxpool(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.avgpool(x).flatten(1)
        return x if pre_logits else self.fc(x)


class SEResNet50(TimmApi, nets.SEResNet50):
    """MONAI SE-ResNet-50 (3D); the head is `last_linear` after pooling and optional dropout."""

    covidzoo_name = "monai-seresnet50"

    def __init__(self, num_classes: int = 1, in_chans: int = 1, **kwargs: Any) -> None:
        super().__init__(
            spatial_dims=3, in_channels=in_chans, num_classes=max(num_classes, 1), **kwargs
        )
        self._set_up(num_classes, in_chans)

    def get_classifier(self) -> nn.Module:
        return self.last_linear

    def _set_classifier(self, head: nn.Module) -> None:
        self.last_linear = head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.adaptive_avg_pool(x)
        if self.dropout is not None:
            x = self.dropout(x)
        x = x.flatten(1)
        return x if pre_logits else self.last_linear(x)


def _no_download(kwargs: dict[str, Any]) -> dict[str, Any]:
    """MONAI's `pretrained=True` downloads weights; covidzoo never downloads anything."""
    if kwargs.pop("pretrained", False):
        raise BadInputError(
            "covidzoo-monai builds untrained networks only (pretrained=True would download);"
            " load local weights with model.load_state_dict instead"
        )
    return kwargs


def densenet121(**kwargs: Any) -> DenseNet121:
    """MONAI DenseNet-121, 3D: `num_classes` and `in_chans` become MONAI's `out_channels` and
    `in_channels`; other keywords go to `monai.networks.nets.DenseNet121`."""
    return DenseNet121(**_no_download(kwargs))


def _resnet(name: str, depth_layers: tuple[str, list[int]], **kwargs: Any) -> ResNet:
    block, layers = depth_layers
    kwargs = _no_download(kwargs)
    # MedicalNet's (and MONAI's ResNetFeatures') stem: MONAI's default stride 1 would run the
    # 7x7x7 convolution at full resolution, several times the cost of the rest of the network.
    kwargs.setdefault("conv1_t_stride", 2)
    return ResNet(
        name, block=block, layers=layers, block_inplanes=get_inplanes(), **kwargs
    )


def resnet18(**kwargs: Any) -> ResNet:
    """MONAI ResNet-18, 3D: `num_classes` and `in_chans` (MONAI's `n_input_channels`); other
    keywords (`conv1_t_stride`, `widen_factor`, `shortcut_type`, ...) go to MONAI's ResNet."""
    return _resnet("monai-resnet18", ("basic", [2, 2, 2, 2]), **kwargs)


def resnet50(**kwargs: Any) -> ResNet:
    """MONAI ResNet-50, 3D: as `resnet18`, with bottleneck blocks 3/4/6/3."""
    return _resnet("monai-resnet50", ("bottleneck", [3, 4, 6, 3]), **kwargs)


def seresnet50(**kwargs: Any) -> SEResNet50:
    """MONAI SE-ResNet-50, 3D: `num_classes` and `in_chans` (MONAI's `in_channels`); other
    keywords go to `monai.networks.nets.SEResNet50`."""
    return SEResNet50(**_no_download(kwargs))
