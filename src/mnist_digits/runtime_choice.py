"""`--runtime auto`: time each runtime on this machine, hold its answers to PyTorch fp32's, and take
the fastest that keeps them; the choice is cached per machine and model file.

    choice = choose_runtime(model, model_path, torch.device("cpu"))
    choice.name, choice.single      # the runtime for batches, and the one for a single image
    choice.describe()               # "runtime onnx-int8 (auto: 2.4x torch here, ...; cached); ..."

$MNIST_DIGITS_RUNTIME_CACHE=0 keeps no choice (each is made afresh); set to a folder, it keeps the
choices and the ONNX exports there instead of the user cache directory.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .runtime_cache import AUTO, Measurement, RuntimeChoice, cache_key, cached_choice, keep_choice
from .runtimes import (
    ONNX,
    ONNX_INT8,
    TORCH,
    TORCH_BF16,
    Runtime,
    build_runtime,
    local_mnist,
    onnxruntime_version,
)

# Work of fewer images runs on PyTorch unless a choice is cached: choosing costs seconds (once per
# machine and model), more than it saves on a few hundred images.
AUTO_MIN_IMAGES = 1000
MAX_CALLS = 10_000  # per timing loop, whatever the clock says (a clock that stands still ends too)

# How a candidate is held to PyTorch fp32's answers, the promise of `auto` ("the same answers"):
# - fp32 runtimes (onnx) do the same arithmetic in another order (logits within about 1e-5): they
#   must give fp32's digit on every generated image; one difference means a broken export.
# - Reduced precision (torch-bf16, onnx-int8) moves logits by about 1e-2, which flips images whose
#   top two digits nearly tie, and generated strokes are full of those (a fifth to a half of them
#   get under 0.6 probability): held to every generated digit, they would never pass. Real digits
#   seldom tie, so with MNIST's test set on this machine they must give fp32's digit on 99.95% of
#   it (5 of 10,000 images may differ) AND keep fp32's test accuracy to within 0.03 points (3
#   images): bf16 does (the same digit on 99.99% for `reference` and 100.00% for `best`, accuracy
#   within 0.01 points), while int8 of `best`, at 99.67% against 99.74% (7 more mistakes), does not.
#   Accuracy alone would not do: a runtime may trade its mistakes for others and score the same.
#   Without MNIST, they must give fp32's digit on 99.5% of the generated images. int8 falls short
#   of that on generated strokes (88-94% measured), so without MNIST `auto` leaves it out: a choice
#   that cannot be checked on real digits is not taken.


@dataclass(frozen=True)
class ChoiceConfig:
    """How `auto` times and checks the candidates."""

    budget: float = 2.5  # s of timing for all candidates together, warm-ups and checks excluded
    batch: int = 1000  # generated images per timed call; every candidate's digits are compared on them
    single_share: float = 0.25  # of each candidate's time, spent timing one-image calls (latency)
    margin: float = 0.10  # a winner is this much faster than torch fp32 (images/s, or p50 latency)
    agreement: float = 0.995  # reduced precision without MNIST: least share of fp32's generated digits
    test_agreement: float = 0.9995  # reduced precision with MNIST: least share of fp32's test digits...
    accuracy_drop: float = 0.0003  # ...and most test accuracy lost (0.03 points)


DEFAULT_CONFIG = ChoiceConfig()


# --- the candidates, and what they are checked on ---------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A runtime `auto` may take, built only when it is tried."""

    name: str
    build: Callable[[], Runtime]  # may raise: the candidate is then left out, with the reason
    exact: bool  # fp32 arithmetic: held to fp32's digit on every check image (see the rules above)


def candidates(
    model: torch.nn.Module, model_path: Path, device: torch.device, precision: str = AUTO
) -> list[Candidate]:
    """torch fp32 first (the others are held to it); bf16 where `device` computes it natively; ONNX
    Runtime fp32 and int8 on the CPU when it is installed. precision 'fp32' leaves out bf16 and int8."""
    from .device import native_bf16

    # ONNX Runtime gets the threads PyTorch has: the server gives each request one.
    threads = torch.get_num_threads()

    def offer(name: str) -> Candidate:
        return Candidate(
            name, lambda: build_runtime(name, model, model_path, device, threads), name in (TORCH, ONNX)
        )

    names = [TORCH]
    if precision == AUTO and native_bf16(device):
        names.append(TORCH_BF16)
    if device.type == "cpu" and onnxruntime_version() is not None:
        names += [ONNX, ONNX_INT8] if precision == AUTO else [ONNX]
    return [offer(name) for name in names]


@dataclass(frozen=True)
class CheckImages:
    """What the candidates are timed and compared on."""

    generated: np.ndarray  # (N, 1, 28, 28) digit-like images (export.synthetic_digits)
    test: tuple[np.ndarray, np.ndarray] | None  # MNIST's test images (N, 1, 28, 28) and labels, if here


def check_images(config: ChoiceConfig = DEFAULT_CONFIG, with_test: bool = True) -> CheckImages:
    """config.batch generated images, and MNIST's test set when `with_test` and it is on this machine."""
    from .data import to_tensors
    from .export import synthetic_digits

    mnist = local_mnist() if with_test else None
    test = None
    if mnist is not None:
        images, labels = to_tensors(mnist.test)
        test = (images.numpy(), labels.numpy())
    return CheckImages(synthetic_digits(config.batch, seed=2), test)


# --- measuring and choosing -------------------------------------------------------------------


@dataclass
class _Trial:
    """A candidate while it is tried."""

    candidate: Candidate
    runtime: Runtime | None = None  # None: it could not be built or run
    digits: np.ndarray | None = None  # (N,) on the generated images
    images_per_s: float = 0.0
    latency_ms: float = float("inf")
    passed: bool | None = None
    check: str = ""


def pick(
    offered: Sequence[Candidate],
    check: CheckImages,
    config: ChoiceConfig = DEFAULT_CONFIG,
    timer: Callable[[], float] = time.perf_counter,
) -> RuntimeChoice:
    """Time each candidate for an equal share of config.budget, hold its answers to the first's
    (torch fp32), and take the fastest that keeps them and beats torch fp32 by config.margin, for
    batches and for one image; torch fp32 where none does."""
    if not offered or offered[0].name != TORCH:
        raise ValueError("the first candidate must be torch fp32: the others are held to its answers")
    share = config.budget / len(offered)
    trials = [_try(c, check.generated, share, config, timer, must_run=i == 0) for i, c in enumerate(offered)]
    baseline = trials[0]
    baseline.passed, baseline.check = True, "the reference"
    for trial in trials[1:]:
        if trial.runtime is not None:
            _compare_digits(trial, baseline)
    fp32_digits: list[np.ndarray] = []  # of the fastest exact runtime on MNIST's test set, once taken

    def passes(trial: _Trial) -> bool:
        if trial.passed is None:  # reduced precision, checked only if it could win: it costs seconds
            _check_reduced(trial, trials, check, config, fp32_digits)
        return bool(trial.passed)

    def fastest(speed: Callable[[_Trial], float]) -> _Trial:
        for trial in sorted(trials[1:], key=speed, reverse=True):
            faster = speed(trial) >= speed(baseline) * (1 + config.margin)
            if trial.runtime is not None and faster and passes(trial):  # passes() last: it may cost seconds
                return trial
        return baseline

    batched = fastest(lambda t: t.images_per_s)
    single = fastest(lambda t: 1 / t.latency_ms if t.latency_ms > 0 else float("inf"))
    if batched is baseline:
        others = [t.candidate.name for t in trials[1:]]
        reason = (
            f"none of {', '.join(others)} was {config.margin:.0%} faster here and kept its answers"
            if others
            else "the only runtime here"
        )
    else:
        reason = f"{batched.images_per_s / baseline.images_per_s:.1f}x torch here, {batched.check}"
    measurements = tuple(
        Measurement(
            t.candidate.name,
            t.images_per_s if t.runtime is not None else None,
            t.latency_ms if t.runtime is not None else None,
            t.passed,
            t.check or "not checked: it could not have won",
        )
        for t in trials
    )
    built = {t.candidate.name: t.runtime for t in (batched, single) if t.runtime is not None}
    return RuntimeChoice(batched.candidate.name, single.candidate.name, reason, measurements, runtimes=built)


def _try(
    candidate: Candidate,
    images: np.ndarray,
    seconds: float,
    config: ChoiceConfig,
    timer: Callable[[], float],
    must_run: bool,
) -> _Trial:
    """Build the candidate, take its digits, time it; one that fails is left out (unless `must_run`)."""
    trial = _Trial(candidate)
    try:
        runtime = candidate.build()
        trial.digits = runtime.logits(images).argmax(1)  # doubles as the batch path's warm-up
        for i in range(3):  # the one-image path's warm-up
            runtime.logits(images[i : i + 1])
        trial.images_per_s = _throughput(runtime, images, seconds * (1 - config.single_share), timer)
        trial.latency_ms = _latency_ms(runtime, images, seconds * config.single_share, timer)
        trial.runtime = runtime
    except Exception as e:  # an export, a quantization or a session that fails: `auto` goes on without it
        if must_run:
            raise
        trial.passed, trial.check = False, f"could not run: {e}"
    return trial


def _throughput(runtime: Runtime, images: np.ndarray, seconds: float, timer: Callable[[], float]) -> float:
    calls, start = 0, timer()
    while True:
        runtime.logits(images)
        calls += 1
        elapsed = timer() - start
        if elapsed >= seconds or calls >= MAX_CALLS:
            return calls * len(images) / max(elapsed, 1e-9)


def _latency_ms(runtime: Runtime, images: np.ndarray, seconds: float, timer: Callable[[], float]) -> float:
    times: list[float] = []
    start = timer()
    while len(times) < 5 or (timer() - start < seconds and len(times) < MAX_CALLS):
        image = images[len(times) % len(images)][None]
        before = timer()
        runtime.logits(image)
        times.append(timer() - before)
    return statistics.median(times) * 1000


def _compare_digits(trial: _Trial, baseline: _Trial) -> None:
    """The rule for fp32 runtimes: every digit fp32's; reduced precision is checked later, if need be."""
    assert trial.digits is not None and baseline.digits is not None
    count = len(baseline.digits)
    differ = int((trial.digits != baseline.digits).sum())
    if trial.candidate.exact:
        trial.passed = differ == 0
        trial.check = (
            f"same digits on {count:,} generated images"
            if differ == 0
            else f"a different digit on {differ} of {count:,} generated images"
        )


def _check_reduced(
    trial: _Trial, trials: list[_Trial], check: CheckImages, config: ChoiceConfig, fp32: list[np.ndarray]
) -> None:
    """The rule for reduced precision (see the top of the module): fp32's digits and test accuracy on
    MNIST's test set, else fp32's digits on the generated images. `fp32` memoizes fp32's test digits."""
    assert trial.runtime is not None and trial.digits is not None and trials[0].digits is not None
    if check.test is None:
        agreement = float((trial.digits == trials[0].digits).mean())
        trial.passed = agreement >= config.agreement
        trial.check = (
            f"fp32's digit on {agreement:.1%} of {len(trial.digits):,} generated images "
            f"(MNIST's test set is not on this machine; {config.agreement:.1%} needed)"
        )
        return
    images, labels = check.test
    if not fp32:  # from the fastest runtime that computes in fp32 and kept every digit
        exact = [t for t in trials if t.candidate.exact and t.passed and t.runtime is not None]
        reference = max(exact, key=lambda t: t.images_per_s)
        assert reference.runtime is not None
        fp32.append(_digits(reference.runtime, images, config.batch))
    digits = _digits(trial.runtime, images, config.batch)
    agreement = float((digits == fp32[0]).mean())
    accuracy, fp32_accuracy = float((digits == labels).mean()), float((fp32[0] == labels).mean())
    # Shares of N images are k / N: the margins keep a share that is exactly at the bar in.
    trial.passed = (
        agreement >= config.test_agreement - 1e-9 and accuracy >= fp32_accuracy - config.accuracy_drop - 1e-9
    )
    trial.check = (
        f"fp32's digit on {agreement:.2%} of {len(labels):,} MNIST test images, "
        f"test accuracy {accuracy:.2%} against fp32's {fp32_accuracy:.2%}"
    )
    if not trial.passed:
        trial.check += (
            f" ({config.test_agreement:.2%} and within {config.accuracy_drop * 100:.2f} points needed)"
        )


def _digits(runtime: Runtime, images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate(
        [runtime.logits(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)]
    )


def choose_runtime(
    model: torch.nn.Module,
    model_path: Path,
    device: torch.device | str = "cpu",
    precision: str = AUTO,
    *,
    config: ChoiceConfig | None = None,
    offered: Sequence[Candidate] | None = None,
    check: CheckImages | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> RuntimeChoice:
    """The fastest runtime for `model` here that keeps torch fp32's answers, from the cache or
    measured now (seconds) and cached. precision 'fp32' leaves out bf16 and int8; `offered`,
    `check` and `timer` replace the candidates, the images and the clock."""
    device = torch.device(device)
    if precision not in (AUTO, "fp32"):
        raise InputError(f"precision {precision!r} leaves nothing to choose: give auto or fp32.")
    key = cache_key(Path(model_path), device, precision)
    found = cached_choice(key)
    if found is not None:
        return found
    config = config or DEFAULT_CONFIG
    offered = candidates(model, Path(model_path), device, precision) if offered is None else offered
    if check is None:
        check = check_images(config, with_test=not all(c.exact for c in offered))
    choice = pick(offered, check, config, timer)
    keep_choice(key, choice)
    return choice


class AutoRuntime:
    """`auto` for one loaded model: the cached choice if there is one; else `fallback` until work of
    AUTO_MIN_IMAGES images or more (or `choose`) makes the choice."""

    def __init__(
        self,
        model: torch.nn.Module,
        model_path: Path,
        device: torch.device,
        precision: str,
        fallback: Runtime,
        config: ChoiceConfig | None = None,
    ) -> None:
        self.model, self.path, self.device, self.precision = model, Path(model_path), device, precision
        self.fallback, self.config = fallback, config
        self._lock = threading.RLock()  # the server's requests share it
        self._built: dict[str, Runtime] = {}
        self.choice = cached_choice(cache_key(self.path, device, precision))

    def choose(self) -> RuntimeChoice:
        """The choice, made now (and cached) if there is none yet."""
        with self._lock:
            if self.choice is None:
                self.choice = choose_runtime(
                    self.model, self.path, self.device, self.precision, config=self.config
                )
                self._built.update(self.choice.runtimes)
            return self.choice

    def runtime(self, count: int) -> Runtime:
        """What runs work of `count` images: the choice's (its one-image runtime for 1), choosing
        first for AUTO_MIN_IMAGES or more; `fallback` while there is no choice."""
        if self.choice is None and count >= AUTO_MIN_IMAGES:
            self.choose()
        if self.choice is None:
            return self.fallback
        name = self.choice.single if count == 1 else self.choice.name
        with self._lock:
            if name not in self._built:
                try:
                    self._built[name] = build_runtime(
                        name, self.model, self.path, self.device, torch.get_num_threads()
                    )
                except Exception:  # a cached choice whose ONNX file can no longer be made here
                    if not self.choice.cached:
                        raise
                    self.choice = None
                    return self.fallback
            return self._built[name]

    def describe(self) -> str:
        if self.choice is not None:
            return self.choice.describe()
        return (
            f"runtime {self.fallback.name} (auto: no choice made for this machine and model yet; work of "
            f"{AUTO_MIN_IMAGES:,} images or more makes one)"
        )
