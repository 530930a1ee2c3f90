"""What a model is trained to say: the classes, the loss, and how logits become probabilities.

One home for the difference between the two kinds of study covidzoo trains:

- **binary** (two classes, covid / non-covid, the default): one output, a sigmoid, binary
  cross-entropy (with `pos_weight`, the 3D RegNet paper's loss weight, or class weights), and
  a decision threshold chosen on validation data (the Youden point);
- **multi-class** (three or more classes: COVID-CT-MD's COVID-19 / CAP / normal, the COV19D
  severity grades): K outputs, a softmax, cross-entropy with class weights and label
  smoothing, and the class of highest probability as the decision.

Targets may be hard (class indices) or soft (mixup and cutmix's mixtures): binary soft targets
are the covid probability per scan, multi-class ones a `B x K` distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import BadInputError
from .values import BINARY_CLASSES


@dataclass(frozen=True)
class Task:
    """The classes of a study and how a model is trained on them.

    `class_weights` (one per class) weight each scan's loss by its class, generalising
    `pos_weight` (binary only: the covid class's weight relative to non-covid's, as torch's
    `pos_weight`); at most one of the two is given. `label_smoothing` moves targets towards
    uniform by that amount (binary: towards 0.5).
    """

    classes: tuple[str, ...] = BINARY_CLASSES
    pos_weight: float | None = None
    class_weights: tuple[float, ...] | None = None
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        classes = tuple(self.classes)
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise BadInputError(f"classes must be two or more distinct names, got {classes}")
        object.__setattr__(self, "classes", classes)
        if self.class_weights is not None:
            weights = tuple(float(w) for w in self.class_weights)
            if len(weights) != len(classes):
                raise BadInputError(
                    f"--class-weights: {len(weights)} weight(s) for {len(classes)} classes "
                    f"({', '.join(classes)})")
            if not all(math.isfinite(w) and w > 0 for w in weights):
                raise BadInputError(f"--class-weights must be finite numbers > 0, got {weights}")
            if self.pos_weight is not None:
                raise BadInputError("--class-weights and --pos-weight: give one (pos_weight is "
                                    "the covid class's weight of a binary study)")
            object.__setattr__(self, "class_weights", weights)
        if self.pos_weight is not None and not self.binary:
            raise BadInputError(f"--pos-weight is for two classes; these data have "
                                f"{len(classes)}: use --class-weights")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise BadInputError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def outputs(self) -> int:
        """Logits per scan: 1 (the covid logit) for two classes, else one per class."""
        return 1 if self.binary else len(self.classes)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Loss targets of class indices (unknown, -1, as class 0): binary `B x 1` floats,
        multi-class `B` longs."""
        labels = labels.clamp(min=0)
        if self.binary:
            return labels.to(torch.float32).view(-1, 1)
        return labels.to(torch.long).view(-1)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
        """The training loss of `logits` against hard or soft `targets` (see `targets`)."""
        logits = logits.float()
        device = logits.device
        if self.binary:
            target = targets.to(torch.float32).view(-1, 1)
            if self.label_smoothing:
                target = target * (1 - self.label_smoothing) + self.label_smoothing / 2
            scale, pos_weight = 1.0, self.pos_weight
            if self.class_weights is not None:  # w1*y*log(p) + w0*(1-y)*log(1-p)
                scale, pos_weight = self.class_weights[0], (self.class_weights[1]
                                                            / self.class_weights[0])
            weight = None if pos_weight is None else torch.tensor([pos_weight], device=device)
            loss = F.binary_cross_entropy_with_logits(
                logits.view(-1, 1), target, pos_weight=weight, reduction="none") * scale
            loss = loss.view(-1)
        else:
            weight = (None if self.class_weights is None
                      else torch.tensor(self.class_weights, device=device))
            logits = logits.view(len(logits), -1)
            soft = targets.is_floating_point()
            target = targets.to(torch.float32) if soft else targets.to(torch.long)
            if reduction != "mean" or weight is None or not soft:
                # A weighted mean over class indices divides by the scans' total weight.
                return F.cross_entropy(logits, target, weight=weight,
                                       label_smoothing=self.label_smoothing, reduction=reduction)
            # Soft targets, weighted: divided by their total weight too (torch divides by the
            # batch size), so one-hot targets give the loss of their class indices.
            total = F.cross_entropy(logits, target, weight=weight, reduction="sum",
                                    label_smoothing=self.label_smoothing)
            return total / (target @ weight).sum()
        return loss.mean() if reduction == "mean" else loss

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities: binary, the covid probability per scan (`B`); else `B x K`."""
        logits = logits.float().reshape(len(logits), -1)
        if self.binary:
            return torch.sigmoid(logits[:, 0])
        return torch.softmax(logits, dim=1)

    def to_dict(self) -> dict[str, object]:
        return {"classes": list(self.classes), "pos_weight": self.pos_weight,
                "class_weights": None if self.class_weights is None else list(self.class_weights),
                "label_smoothing": self.label_smoothing}

