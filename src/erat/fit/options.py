"""What :func:`erat.fit.fit` is told and what it returns: :class:`FitOptions` (how to train),
:class:`FitData` (the tensors) and :class:`FitResult` (the model and the record)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

from erat import fields
from erat.errors import UserError
from erat.fields import param
from erat.inputs import images, labels
from erat.threat import Norm

Select = Literal["last", "best-robust"]
DEFAULT_EPOCHS = 10  # the length of a run that names neither --epochs nor --budget


@dataclass
class FitOptions:
    """How to train: length, batches, optimiser, schedule, precision, validation.

    ``epochs`` is None when ``budget`` sets the length (a budget-driven run records no
    epoch count it did not use)."""

    epochs: int | None = param(None, f"passes over the training set; with --labels, over the "
                                     f"larger of the labeled and unlabeled sets (default: "
                                     f"{DEFAULT_EPOCHS}; not with --budget)")
    budget: float | None = param(None, "train for this cost in ERM epochs (sets the updates "
                                       "instead of --epochs)")
    budget_epochs: int | None = param(None, "with --budget: split the run into this many "
                                            "epochs (validations, checkpoints); default: "
                                            "one pass over the data each")
    batch_size: int = param(128, "labeled batch size")
    unlabeled_batch_size: int | None = param(None, "unlabeled batch size (default: "
                                                   "--batch-size)")
    epoch_updates: int | None = param(None, "optimiser updates per epoch (default: one pass)")
    optimizer: Literal["sgd", "adam"] = param("adam", "optimiser")
    lr: float = param(1e-3, "learning rate")
    momentum: float = param(0.9, "SGD momentum")
    weight_decay: float = param(0.0, "L2 weight decay")
    schedule: Literal["cosine", "step", "none"] = param("cosine", "learning-rate schedule")
    seed: int = param(0, "random seed")
    amp: Literal["none", "bf16", "fp16"] = param("none", "mixed precision (the GPU fast path "
                                                             "uses bf16 for convolutional models "
                                                             "unless --no-fast-bf16)")
    channels_last: bool = param(False, "channels-last memory format (faster on recent GPUs)")
    compile: bool = param(False, "torch.compile the model (the fast path does on a GPU)")
    fast: Literal["auto", "on", "off"] = param("auto", "the GPU fast path (erat.fit.fast): "
                                                       "auto = on with CUDA, off on the CPU")
    fast_data: bool = param(True, "fast path: training images on the GPU as uint8, batches "
                                  "drawn and augmented there")
    fast_graph: bool = param(True, "fast path: the model captured as CUDA graphs")
    fast_bf16: bool = param(True, "fast path: bf16 autocast for convolutional models")
    fast_channels_last: bool = param(True, "fast path: channels-last memory for "
                                           "convolutional models")
    augment: bool = param(True, "the dataset's train-time augmentation")
    progress: bool = param(True, "progress bars (on a terminal only)")
    val_n: int = param(1000, "validation images measured after each epoch (drawn once)")
    val_eps: float | None = param(None, "radius of the per-epoch validation PGD (default: "
                                        "the method's eps)")
    val_norm: Norm | None = param(None, "norm of the per-epoch validation PGD (default: the "
                                        "method's; l2 for a method without one, as ERM)")
    val_steps: int = param(10, "steps of the per-epoch validation PGD")
    select: Select = param("last", "model.pt from the last epoch, or from the epoch of the "
                                   "best validation robust accuracy")

    def __post_init__(self) -> None:
        if self.epochs is not None and self.budget is not None:
            raise UserError("--budget and --epochs contradict each other; give one")
        if self.epochs is None and self.budget is None:
            self.epochs = DEFAULT_EPOCHS
        fields.python_numbers(self)
        fields.check_types(self)
        for name in ("epochs", "budget_epochs", "unlabeled_batch_size", "epoch_updates"):
            if getattr(self, name) is not None:
                fields.integer(name, getattr(self, name), 1)
        if self.budget_epochs is not None and self.budget is None:
            raise UserError("budget_epochs must come with a budget (it splits one into epochs)")
        for name in ("batch_size", "val_n", "val_steps"):
            fields.integer(name, getattr(self, name), 1)
        fields.positive("budget", self.budget, optional=True)
        fields.positive("lr", self.lr)
        fields.positive("val_eps", self.val_eps, optional=True)
        fields.finite_nonneg("weight_decay", self.weight_decay)
        if not 0 <= self.momentum < 1:
            raise UserError(f"momentum must be a number in [0, 1), got {self.momentum!r}")


@dataclass
class FitData:
    """Training tensors: labeled ``x`` ``[N, C, H, W]`` in [0, 1] and ``y`` ``[N]``; optional
    unlabeled inputs, a validation set (model selection) and a test set (logged only)."""

    x: Tensor
    y: Tensor
    x_unlabeled: Tensor | None = None
    val: tuple[Tensor, Tensor] | None = None
    test: tuple[Tensor, Tensor] | None = None
    augment: str = "none"  # the dataset's train-time augmentation (erat.datasets.augment)
    unlabeled_count: int = 0  # an unlabeled set the method does not read: its epoch length

    def __post_init__(self) -> None:
        """Every tensor checked once, values included (:mod:`erat.inputs`); labels int64."""
        self.x = images(self.x, "FitData.x")
        self.y = labels(self.y, len(self.x), "FitData.y")
        if self.x_unlabeled is not None:
            images(self.x_unlabeled, "FitData.x_unlabeled", like=self.x, like_name="FitData.x")
        for name in ("val", "test"):
            pair = getattr(self, name)
            if pair is not None:
                if not isinstance(pair, tuple | list) or len(pair) != 2:
                    raise TypeError(f"FitData.{name} must be an (x, y) pair of tensors, got "
                                    f"{type(pair).__name__}")
                x = images(pair[0], f"FitData.{name}[0]", like=self.x, like_name="FitData.x")
                setattr(self, name, (x, labels(pair[1], len(x), f"FitData.{name}[1]")))


# the options a resumed run may change: how it runs, not what it trains
RESUME_MAY_CHANGE = frozenset({"progress", "compile", "channels_last", "fast_graph",
                               "fast_channels_last"})


@dataclass
class FitResult:
    """What :func:`erat.fit.fit` returns: the model holding the selected weights, and the
    record; ``history`` holds one dict per epoch, the lines of ``metrics.jsonl`` (the
    README lists their keys)."""

    model: nn.Module
    last_epoch: int
    selected_epoch: int
    last_state: dict[str, Tensor] | None  # the last epoch's weights when another is selected
    updates: int
    cost: float | None  # ERM epochs
    seconds: float  # training time, validation excluded
    stopped: bool = False  # ended early by stop_after
    history: list[dict[str, Any]] = field(default_factory=list)
    ran: dict[str, Any] = field(default_factory=dict)  # how the last session trained it
