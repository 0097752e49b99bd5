"""The reference CNN: a Keras-equivalent network with Keras' initialization and BatchNorm."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TypeGuard

import torch
from torch import nn

from .errors import MnistDigitsError

IMAGE_SIZE = 28  # MNIST images are 28x28 pixels
NUM_CLASSES = 10  # digits 0-9
MAX_WIDTH = 1024  # most channels or dense units a layer may have; the widest recipe uses 128
# Fields every stored model config holds; the others came later and default when absent.
REQUIRED_FIELDS = ("channels", "hidden", "dropout_first", "dropout", "bn_momentum", "bn_eps")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the reference network; the defaults give the 730,602-parameter model."""

    channels: tuple[int, int, int] = (32, 64, 128)  # conv widths of the three blocks
    hidden: int = 128  # units of the dense layer before the classifier
    dropout_first: float = 0.20  # dropout after the first conv block
    dropout: float = 0.25  # dropout everywhere else
    bn_momentum: float = 0.01  # = 1 - Keras' momentum 0.99 (PyTorch counts the other way)
    bn_eps: float = 1e-3  # Keras' BatchNormalization epsilon
    conv_batchnorm: bool = False  # BatchNorm after every convolution (not in the reference):
    # faster, steadier training at high learning rates, used by every recipe but the reference
    kernel: int = 3  # side of every convolution's kernel, odd; 5 and 7 did not help ensembles
    # (docs/experiments.md, "Ensembles on one validation split"), so no recipe uses them

    def __post_init__(self) -> None:
        # Checked here, before any layer is built: a model file's header is where configs come
        # from, and channels of 10**7 would ask for petabytes, dropout 5.0 fails deep in torch.
        channels = self.channels
        if (
            not isinstance(channels, tuple)
            or len(channels) != 3
            or not all(is_whole(c) and 1 <= c <= MAX_WIDTH for c in channels)
        ):
            raise MnistDigitsError(
                f"channels {shown(channels)}: give three whole numbers from 1 to {MAX_WIDTH:,}, "
                "such as (32, 64, 128) (the reference)."
            )
        if not is_whole(self.hidden) or not 1 <= self.hidden <= MAX_WIDTH:
            raise MnistDigitsError(
                f"hidden {shown(self.hidden)}: give a whole number of units from 1 to {MAX_WIDTH:,}, "
                "such as 128."
            )
        for name in ("dropout_first", "dropout"):
            value = getattr(self, name)
            if not is_number(value) or not 0.0 <= value < 1.0:
                raise MnistDigitsError(f"{name} {shown(value)}: give a probability from 0 to below 1.")
        if not is_number(self.bn_momentum) or not 0.0 <= self.bn_momentum <= 1.0:
            raise MnistDigitsError(f"bn_momentum {shown(self.bn_momentum)}: give a number from 0 to 1.")
        if not is_number(self.bn_eps) or not 0.0 < self.bn_eps <= 1.0:
            raise MnistDigitsError(
                f"bn_eps {shown(self.bn_eps)}: give a small positive number, such as 0.001."
            )
        if not isinstance(self.conv_batchnorm, bool):
            raise MnistDigitsError(f"conv_batchnorm {shown(self.conv_batchnorm)}: give true or false.")
        if (
            not is_whole(self.kernel)
            or self.kernel < 1
            or self.kernel % 2 == 0
            or feature_side(self.kernel) < 1
        ):
            raise MnistDigitsError(
                f"kernel {shown(self.kernel)}: give an odd size from 1 to 13, such as 3 (the reference), "
                "5 or 7."
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: object) -> ModelConfig:
        """The config a file stored; MnistDigitsError naming the field that is missing, unknown or
        out of range. Fields added after the first version (conv_batchnorm, kernel) default."""
        if not isinstance(values, dict):
            raise MnistDigitsError(f"the model config is {shown(values)}, not an object of its fields.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in values if k not in known)
        if unknown:
            raise MnistDigitsError(
                f"the model config has fields this version does not know ({', '.join(unknown)}); "
                "it was written by another version of mnist-digits, or damaged."
            )
        missing = [name for name in REQUIRED_FIELDS if name not in values]
        if missing:
            raise MnistDigitsError(f"the model config lacks {', '.join(missing)}.")
        values = dict(values)
        if isinstance(values["channels"], list):  # JSON has no tuples
            values["channels"] = tuple(values["channels"])
        return cls(**values)


def is_whole(value: object) -> TypeGuard[int]:
    """An int that is not a bool (JSON's true and false are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite int or float; bools are not numbers here."""
    if isinstance(value, float):
        return math.isfinite(value)
    return is_whole(value)  # ints are finite, and 10**400 would overflow math.isfinite


def shown(value: object) -> str:
    """A value as an error message quotes it: its repr, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def feature_side(kernel: int) -> int:
    """Side of the last feature map: 6 for 3x3 kernels, 5 for 5x5, 4 for 7x7."""
    side = IMAGE_SIZE - 2 * (kernel - 1)  # two 'valid' convolutions: 28 -> 26 -> 24 for 3x3
    side //= 2  # max-pool: 24 -> 12
    return side // 2  # max-pool: 12 -> 6 ('same' convolutions keep the size)


def feature_size(config: ModelConfig) -> int:
    """Length of the flattened feature vector: 128 channels x 6 x 6 = 4608 by default."""
    return config.channels[2] * feature_side(config.kernel) ** 2


class Dropout(nn.Dropout):
    """nn.Dropout, whose mask on the CPU is drawn as 15-bit random numbers, four to each 64-bit
    word of torch's default generator, rather than with bernoulli_: the same layer (each value
    zeroed with probability p, to within 2^-16, the rest scaled by 1 / (1 - p)) in a sixth of
    bernoulli_'s time. bernoulli_ took over a quarter of a bf16 training step of the reference
    network on a 2-core Intel Xeon with AMX, and one float from torch.rand for each value still
    took 8% on a 2-core AMD EPYC with AVX-512 BF16: the generator runs on one core."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p in (0, 1) or x.device.type != "cpu":
            return super().forward(x)
        keep = _keep_mask(x, self.p)
        scale = 1 / (1 - self.p)
        if x.dtype == torch.float32:
            return x * keep.mul_(scale)  # one product: the backward pass is one too
        return x.mul(keep).mul_(scale)  # the scale in float32 arithmetic: bfloat16 cannot hold 4/3


def _keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """1 with probability 1 - p (p rounded to a multiple of 2^-15), else 0, for each value of x,
    in x's dtype and memory layout, from torch's default generator.

    random_() fills an int64 with 63 random bits, so each of its four 16-bit lanes is read as its
    low 15 bits v (the top lane's 16th bit is always 0), and (v - t) >> 15 is -1 below the
    threshold t and 0 from it on: four integer passes in place, under half the time of a
    comparison's bool and its conversion, and a mask in x's dtype makes the product and its
    gradient plain multiplications. A channels-last x gets a channels-last mask: with the
    layouts mixed, every pass ran on strided loops. Together these took the forward passes of a
    bf16 training step's dropouts from 3.0 to 1.9 ms on a 2-core AMD EPYC (Zen 5) with AVX-512
    BF16, and whole steps 8% faster at the median of ten paired measurements (fp32: 2.5%)."""
    threshold = round(p * 0x8000)
    if threshold > 0x7FFF:  # p within 2^-16 of 1: every value dropped (and t would not fit 16 bits)
        return torch.zeros_like(x)
    count = x.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64).random_()
    lanes = words.view(torch.int16)[:count]
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = x.shape
        lanes = lanes.view(n, h, w, c).permute(0, 3, 1, 2)
    else:
        lanes = lanes.view(x.shape)
    return lanes.bitwise_and(0x7FFF).sub_(threshold).bitwise_right_shift_(15).add_(1).to(x.dtype)


class DigitNet(nn.Sequential):
    """Conv-conv-pool x2, conv, dense-BN, softmax classifier; outputs logits, shape (N, 10).

    The shapes below are the reference's (3x3 kernels); with k x k kernels each 'valid'
    convolution takes k - 1 pixels off the side and 'same' ones pad k // 2.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        config = config or ModelConfig()
        c1, c2, c3 = config.channels
        k, same = config.kernel, config.kernel // 2

        def conv(c_in: int, c_out: int, padding: int) -> list[nn.Module]:
            if not config.conv_batchnorm:
                return [nn.Conv2d(c_in, c_out, k, padding=padding), nn.ReLU()]
            norm = nn.BatchNorm2d(c_out, eps=config.bn_eps, momentum=config.bn_momentum)
            return [nn.Conv2d(c_in, c_out, k, padding=padding, bias=False), norm, nn.ReLU()]

        # fmt: off
        super().__init__(
            # layer                                            output shape, batch N
            *conv(1, c1, 0),                                   # (N, 32, 26, 26)  valid
            *conv(c1, c1, 0),                                  # (N, 32, 24, 24)  valid
            nn.MaxPool2d(2),                                   # (N, 32, 12, 12)
            Dropout(config.dropout_first),
            *conv(c1, c2, same),                               # (N, 64, 12, 12)  same
            *conv(c2, c2, same),                               # (N, 64, 12, 12)  same
            nn.MaxPool2d(2),                                   # (N, 64, 6, 6)
            Dropout(config.dropout),
            *conv(c2, c3, same),                               # (N, 128, 6, 6)   same
            Dropout(config.dropout),
            nn.Flatten(),                                      # (N, 4608)
            nn.Linear(feature_size(config), config.hidden),    # (N, 128)
            nn.ReLU(),
            nn.BatchNorm1d(config.hidden, eps=config.bn_eps, momentum=config.bn_momentum),
            Dropout(config.dropout),
            nn.Linear(config.hidden, NUM_CLASSES),             # (N, 10) logits; softmax in the loss
        )
        # fmt: on
        self.config = config
        self.reset_parameters_like_keras()

    def reset_parameters_like_keras(self) -> None:
        """He-normal conv kernels, Glorot-uniform dense kernels, zero biases, as Keras does."""
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                fan_in = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
                # Keras' he_normal is a normal truncated at 2 std; 0.8796 undoes the truncation's
                # shrinking of the variance so the kept samples have std sqrt(2 / fan_in).
                std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
                nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
            elif isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)


@dataclass(frozen=True)
class LayerSummary:
    name: str  # Keras-style layer name, e.g. "conv2d_1"
    kind: str  # PyTorch class name
    output_shape: tuple[int, ...]  # without the batch dimension
    params: int


@dataclass(frozen=True)
class ModelSummary:
    layers: list[LayerSummary]
    total_params: int
    trainable_params: int
    non_trainable_params: int  # BatchNorm's running mean and variance, as Keras counts them


_KERAS_NAMES = {
    nn.Conv2d: "conv2d",
    nn.MaxPool2d: "max_pooling2d",
    Dropout: "dropout",
    nn.Flatten: "flatten",
    nn.Linear: "dense",
    nn.BatchNorm1d: "batch_normalization",
    nn.BatchNorm2d: "batch_normalization",
    nn.ReLU: "activation",
}


def summarize(model: DigitNet) -> ModelSummary:
    """Per-layer output shapes and parameter counts, counted the way Keras' summary() does."""
    counts: dict[str, int] = {}
    layers = []
    x = torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for layer in model:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                continue  # Keras folds the activation into the layer before it
            base = _KERAS_NAMES.get(type(layer), type(layer).__name__.lower())
            index = counts.get(base, 0)
            counts[base] = index + 1
            name = base if index == 0 else f"{base}_{index}"
            params = sum(p.numel() for p in layer.parameters())
            params += sum(b.numel() for n, b in layer.named_buffers() if n.startswith("running"))
            layers.append(LayerSummary(name, type(layer).__name__, tuple(x.shape[1:]), params))
    model.train(was_training)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    non_trainable = running_statistics(model)
    return ModelSummary(layers, trainable + non_trainable, trainable, non_trainable)


def running_statistics(model: nn.Module) -> int:
    """BatchNorm's running means and variances: Keras' non-trainable parameters."""
    return sum(b.numel() for n, b in model.named_buffers() if n.rsplit(".", 1)[-1].startswith("running"))


def keras_parameter_count(model: nn.Module) -> int:
    """Weights plus BatchNorm's running statistics, as Keras' summary counts them (networks or ensembles)."""
    return sum(p.numel() for p in model.parameters()) + running_statistics(model)


def format_summary(summary: ModelSummary) -> str:
    """A table in the shape of Keras' model.summary()."""
    names = [f"{layer.name} ({layer.kind})" for layer in summary.layers]
    width = max(34, *(len(n) + 1 for n in names))  # 34 as Keras, wider for long names
    rule, heavy = "_" * (width + 38), "=" * (width + 38)
    lines = [rule, f"{'Layer (type)':<{width}}{'Output Shape':<28}{'Param #':>10}", heavy]
    for i, (name, layer) in enumerate(zip(names, summary.layers, strict=True)):
        shape = "(None, " + ", ".join(str(s) for s in layer.output_shape) + ")"
        lines.append(f"{name:<{width}}{shape:<28}{layer.params:>10,}")
        lines.append(rule if i < len(summary.layers) - 1 else heavy)
    lines += [
        f"Total params: {summary.total_params:,}",
        f"Trainable params: {summary.trainable_params:,}",
        f"Non-trainable params: {summary.non_trainable_params:,}",
        rule,
    ]
    return "\n".join(lines)


def forward_flops(model: nn.Module) -> int:
    """Floating-point operations (multiply and add counted apart) of one image's forward pass.

    Counts the convolutions and dense layers, which are nearly all of the work; a training
    step costs about three times this (forward, and two matrix products backward).
    """
    flops = 0
    x = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for layer in model.children():
            y = layer(x)
            if isinstance(layer, nn.Conv2d):
                per_output = 2 * layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
                flops += per_output * y.numel()
            elif isinstance(layer, nn.Linear):
                flops += 2 * layer.in_features * layer.out_features
            x = y
    model.train(was_training)
    return flops


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, batch_size: int = 1000, *, bf16: bool = False
) -> torch.Tensor:
    """Logits (N, 10), in float32, for float images (N, 1, 28, 28), in eval mode, batch by batch: the
    one forward pass that validation, evaluation and prediction share. `bf16` autocasts it to bfloat16
    (device.pick_precision says where that pays)."""
    model.eval()
    with torch.autocast(images.device.type, torch.bfloat16, enabled=bf16):
        outputs = [
            model(images[i : i + batch_size].contiguous(memory_format=torch.channels_last)).float()
            for i in range(0, len(images), batch_size)
        ]
    return torch.cat(outputs) if outputs else torch.zeros(0, NUM_CLASSES)
