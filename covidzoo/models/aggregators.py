"""Aggregators: the rule that turns a batch of scans `B x C x D x H x W` into `B x K` logits.

- `Volume` hands the whole volume to a 3D backbone.
- The slice aggregators run a 2D backbone on every slice and pool per scan: `SliceMean` (the
  Res-Dense Net paper's rule: the logit of the mean slice probability), `SliceMax`, `SliceTopK`
  (the mean of the k highest slice probabilities) and `SliceAttention` (learned attention pooling
  of slice features, after Ilse et al., 2018).

Slice aggregators share three options:

- `slice_chunk`: at most this many slices go through the backbone at once, bounding memory.
  In eval mode the result equals one pass; in training mode BatchNorm sees each chunk as its own
  batch, and chunking does not reduce the activations kept for backward (use gradient
  checkpointing for that), so the default is one pass.
- `train_slices`: in training mode each scan contributes a random subset of this many slices
  (kept in depth order); in eval mode every slice is used.
- A 1-channel scan is replicated to 3 channels when the backbone was built with `in_chans=3`.

Probabilities follow the number of classes: a sigmoid for one class (the logit is the binary
logit), a softmax over classes otherwise (the "logits" returned are then log-probabilities, so
their softmax is the pooled probability vector).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..errors import BadInputError


def _check_scans(x: torch.Tensor) -> None:
    if x.ndim != 5:
        raise BadInputError(
            f"an aggregator takes scans B x C x D x H x W, got a {x.ndim}-D tensor "
            f"{tuple(x.shape)}"
        )


def _positive(name: str, value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
        raise BadInputError(f"aggregator option {name} must be a positive integer, got {value!r}")
    return None if value is None else int(value)


def backbone_in_chans(backbone: nn.Module) -> int | None:
    """The channels a 2D backbone expects: its `in_chans`, else its first `Conv2d`'s."""
    in_chans = getattr(backbone, "in_chans", None)
    if isinstance(in_chans, int):
        return in_chans
    conv = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


def top_k_probability_logit(slice_logits: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Pool `B x S x K` slice logits into `B x K` scan logits: the mean of the top-k probabilities.

    `k=None` (or `k >= S`) is the plain mean, `k=1` the max. For one class the result is the
    binary logit of that mean probability; for several, the log of the mean softmax
    probabilities (per class, for top-k). Computed in float32 log-space (`logsumexp` of
    `logsigmoid`), so it stays finite and exact where a mean probability rounds to 0 or 1.
    """
    logits = slice_logits.float()
    slices = logits.shape[1]
    k = slices if k is None else min(k, slices)
    if logits.shape[-1] == 1:
        top = logits if k == slices else logits.topk(k, dim=1).values
        # logit(mean sigmoid) = log(sum sigmoid(l)) - log(sum sigmoid(-l)); the 1/k cancels.
        return torch.logsumexp(nn.functional.logsigmoid(top), 1) - torch.logsumexp(
            nn.functional.logsigmoid(-top), 1
        )
    log_probs = logits.log_softmax(dim=-1)
    top = log_probs if k == slices else log_probs.topk(k, dim=1).values
    return torch.logsumexp(top, 1) - math.log(k)


class Volume(nn.Module):
    """The whole scan through a 3D backbone: its logits are the scan's."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = getattr(backbone, "num_classes", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_scans(x)
        return self.backbone(x)


class SliceAggregator(nn.Module):
    """Base of the slice aggregators: slice selection, channel replication and chunking."""

    def __init__(
        self,
        backbone: nn.Module,
        slice_chunk: int | None = None,
        train_slices: int | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = getattr(backbone, "num_classes", None)
        self.slice_chunk = _positive("slice_chunk", slice_chunk)
        self.train_slices = _positive("train_slices", train_slices)
        self.in_chans = backbone_in_chans(backbone)

    def slices(self, x: torch.Tensor) -> torch.Tensor:
        """The slices the backbone sees, `(B*S) x C x H x W`, scan after scan.

        `S` is `D`, or `train_slices` random ones per scan in training mode.
        """
        _check_scans(x)
        b, c, d, h, w = x.shape
        if self.in_chans is not None and c != self.in_chans and not (c == 1 and self.in_chans == 3):
            raise BadInputError(
                f"scans have {c} channel(s) but the slice backbone takes {self.in_chans}"
            )
        if self.training and self.train_slices is not None and self.train_slices < d:
            order = torch.rand(b, d, device=x.device).argsort(dim=1)
            picked = order[:, : self.train_slices].sort(dim=1).values
            rows = torch.arange(b, device=x.device)[:, None]
            out = x[rows, :, picked]  # advanced indexing puts (B, S) first: B x S x C x H x W
        else:
            out = x.transpose(1, 2)
        out = out.reshape(-1, c, h, w)
        if c == 1 and self.in_chans == 3:
            out = out.expand(-1, 3, -1, -1)
        return out

    def per_slice(
        self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        """`fn` applied to the slices of `x` in chunks of `slice_chunk`: `B x S x ...`."""
        batch = x.shape[0]
        slices = self.slices(x)
        if self.slice_chunk is None or slices.shape[0] <= self.slice_chunk:
            out = fn(slices)
        else:
            out = torch.cat([fn(chunk) for chunk in slices.split(self.slice_chunk)])
        return out.reshape(batch, -1, *out.shape[1:])

    def slice_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's logits for every slice used: `B x S x num_classes`."""
        return self.per_slice(self.backbone, x)


class SliceTopK(SliceAggregator):
    """Mean of the k highest slice probabilities per scan (k=8 by default)."""

    def __init__(
        self,
        backbone: nn.Module,
        k: int = 8,
        slice_chunk: int | None = None,
        train_slices: int | None = None,
    ) -> None:
        super().__init__(backbone, slice_chunk=slice_chunk, train_slices=train_slices)
        self.k = _positive("k", k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return top_k_probability_logit(self.slice_logits(x), self.k)


class SliceMean(SliceAggregator):
    """Logit of the mean slice probability per scan (the Res-Dense Net paper's rule)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return top_k_probability_logit(self.slice_logits(x))


class SliceMax(SliceAggregator):
    """Highest slice probability per scan: one clearly affected slice decides."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return top_k_probability_logit(self.slice_logits(x), 1)


class SliceAttention(SliceAggregator):
    """Attention pooling of slice features, then the backbone's own classifier.

    Each slice's pre-logit features `h` get a weight `softmax_s(w . tanh(V h))` (Ilse et al.,
    2018); the weighted sum goes through `backbone.get_classifier()`. The backbone must follow
    the timm API: `forward_features`, `forward_head(pre_logits=True)`, `get_classifier`,
    `num_features`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        hidden: int = 128,
        slice_chunk: int | None = None,
        train_slices: int | None = None,
    ) -> None:
        super().__init__(backbone, slice_chunk=slice_chunk, train_slices=train_slices)
        needed = ("forward_features", "forward_head", "get_classifier", "num_features")
        lacking = [a for a in needed if not hasattr(backbone, a)]
        if lacking:
            raise BadInputError(
                f"slice-attention needs a timm-style backbone; {type(backbone).__name__} "
                f"lacks {', '.join(lacking)}"
            )
        hidden = _positive("hidden", hidden)
        self.attention = nn.Sequential(
            nn.Linear(backbone.num_features, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )

    def _features(self, slices: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(self.backbone.forward_features(slices), pre_logits=True)

    def slice_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights `B x S` (each row sums to 1), for inspection."""
        return self.attention(self.per_slice(self._features, x)).squeeze(-1).softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.per_slice(self._features, x)
        weights = self.attention(features).softmax(dim=1)
        return self.backbone.get_classifier()((weights * features).sum(dim=1))
