import numpy as np
import pytest

from mnist_digits import plots
from mnist_digits.data import Split
from mnist_digits.errors import LIBRARY_TERMS
from mnist_digits.evaluate import (
    NotRecordable,
    calibration,
    check_recordable,
    class_metrics,
    confusion_matrix,
    evaluate_model,
    format_report,
)
from mnist_digits.model import DigitNet, ModelConfig
from mnist_digits.pretrained import available

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    labels = np.array([0, 0, 1, 2, 2, 2])
    predictions = np.array([0, 1, 1, 2, 2, 0])
    matrix = confusion_matrix(labels, predictions)
    assert matrix.sum() == 6
    assert matrix[0, 1] == 1 and matrix[2, 0] == 1 and matrix[2, 2] == 2


def test_class_metrics_precision_recall_f1():
    labels = np.array([0, 0, 1, 2, 2, 2])
    predictions = np.array([0, 1, 1, 2, 2, 0])
    metrics = class_metrics(confusion_matrix(labels, predictions))
    assert metrics[0].precision == pytest.approx(1 / 2) and metrics[0].recall == pytest.approx(1 / 2)
    assert metrics[1].precision == pytest.approx(1 / 2) and metrics[1].recall == 1.0
    assert metrics[2].precision == 1.0 and metrics[2].recall == pytest.approx(2 / 3)
    assert metrics[2].f1 == pytest.approx(0.8)
    assert metrics[5].support == 0 and metrics[5].f1 == 0.0


@pytest.fixture(scope="module")
def small_evaluation(mnist):
    split = Split(mnist.test.images[:300], mnist.test.labels[:300])
    return split, evaluate_model(DigitNet(ModelConfig(channels=(4, 8, 8), hidden=16)), split)


def test_evaluation_is_consistent(small_evaluation):
    split, evaluation = small_evaluation
    assert evaluation.count == 300
    assert np.asarray(evaluation.confusion).sum() == 300
    assert evaluation.accuracy == pytest.approx(np.trace(np.asarray(evaluation.confusion)) / 300)
    assert evaluation.errors == int((evaluation.predictions != split.labels).sum())
    assert ((evaluation.confidences > 0) & (evaluation.confidences <= 1)).all()
    report = format_report(evaluation)
    assert "confusion matrix" in report and f"{evaluation.errors} errors" in report


def test_figures_are_written_as_png(small_evaluation, tmp_path):
    split, evaluation = small_evaluation
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1.2 / e,
            "train_accuracy": 0.9 + e / 100,
            "val_accuracy": 0.91 + e / 100,
            "lr": 1e-3 / e,
        }
        for e in (1, 2, 3)
    ]
    paths = [
        plots.confusion_png(evaluation, tmp_path / "confusion.png"),
        plots.misclassified_png(evaluation, split.images, split.labels, tmp_path / "wrong.png"),
        plots.curves_png(history, tmp_path / "curves.png"),
    ]
    for path in paths:
        content = path.read_bytes()
        assert content.startswith(PNG_MAGIC) and len(content) > 5000
    assert not list(tmp_path.glob("*.tmp"))


def test_evaluation_figures_are_written_with_curves_only_given_a_history(small_evaluation, tmp_path):
    split, evaluation = small_evaluation
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1.1 / e,
            "train_accuracy": 0.9,
            "val_accuracy": 0.9,
            "lr": 1e-3,
        }
        for e in (1, 2)
    ]
    written = plots.write_evaluation_figures(evaluation, split.images, tmp_path / "a", "validation", history)
    assert [p.name for p in written] == [
        "confusion.png",
        "reliability.png",
        "misclassified.png",
        "curves.png",
    ]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in written)
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in written)
    without = plots.write_evaluation_figures(evaluation, split.images, tmp_path / "b")
    assert [p.name for p in without] == ["confusion.png", "reliability.png", "misclassified.png"]


@pytest.mark.parametrize(
    ("model", "tta", "split", "library", "cli"),
    [
        ("my.safetensors", True, "test", "leave out test-time augmentation", "leave out --tta."),
        ("my.safetensors", False, "val", "Leave out the validation split", "Leave out --split val."),
        ("reference", False, "test", "'reference' is shipped with the package", "--record writes into"),
    ],
)
def test_only_the_networks_own_test_accuracy_is_recorded_in_a_file_of_ones_own(
    model, tta, split, library, cli
):
    assert model == "my.safetensors" or model in available()
    with pytest.raises(NotRecordable) as refused:
        check_recordable(model, tta=tta, split=split)
    assert library in str(refused.value) and "--" not in str(refused.value)
    assert str(refused.value).startswith(LIBRARY_TERMS["record"])
    assert cli in refused.value.explain(record="--record", tta="--tta", val="--split val")


def test_a_plain_test_evaluation_of_ones_own_file_may_be_recorded():
    check_recordable("runs/best/model.safetensors", tta=False, split="test")  # no error


# --- calibration -------------------------------------------------------------------------------


def test_calibration_is_zero_for_exactly_calibrated_predictions():
    # In each bin the share correct equals the confidence: 80% right at 0.8, 50% at 0.5, all at 1.
    confidences = np.repeat([0.8, 0.5, 1.0], [1000, 400, 100])
    correct = np.concatenate([np.arange(1000) < 800, np.arange(400) < 200, np.ones(100, bool)])
    bins = calibration(confidences, correct)
    assert bins.ece == pytest.approx(0.0, abs=1e-12)
    assert bins.counts.sum() == 1500


def test_calibration_is_near_zero_when_correctness_is_drawn_with_the_confidence():
    rng = np.random.default_rng(0)
    confidences = rng.uniform(0.1, 1.0, 200_000)
    correct = rng.random(200_000) < confidences
    assert calibration(confidences, correct).ece < 0.01


def test_calibration_error_is_large_for_overconfident_predictions():
    confidences = np.full(1000, 0.99)
    correct = np.arange(1000) % 2 == 0  # right half the time at 99% confidence
    bins = calibration(confidences, correct)
    assert bins.ece == pytest.approx(0.49)
    assert bins.counts[-1] == 1000


def test_calibration_weights_each_bin_by_its_count():
    # bin of 0.95: accuracy 1/2, gap 0.45; bin of 0.35: accuracy 1, gap 0.65; equal weights
    bins = calibration(np.array([0.95, 0.95, 0.35, 0.35]), np.array([True, False, True, True]))
    assert bins.ece == pytest.approx(0.55)


def test_calibration_bins_cover_0_to_1_and_counts_sum_to_n():
    rng = np.random.default_rng(1)
    confidences = np.concatenate([[0.0, 1.0], rng.uniform(0.1, 1.0, 998)])
    bins = calibration(confidences, rng.random(1000) < 0.9)
    assert len(bins.edges) == 16 and bins.edges[0] == 0.0 and bins.edges[-1] == 1.0
    assert bins.counts.shape == bins.accuracy.shape == bins.confidence.shape == (15,)
    assert bins.counts.sum() == 1000
    assert bins.counts[0] >= 1 and bins.counts[-1] >= 1  # 0 and 1 fall inside the end bins
    filled = bins.counts > 0
    assert np.isnan(bins.accuracy[~filled]).all()
    assert (bins.confidence[filled] >= bins.edges[:-1][filled]).all()
    assert (bins.confidence[filled] <= bins.edges[1:][filled]).all()


@pytest.mark.parametrize(
    ("confidences", "correct", "message"),
    [
        ([0.5, 0.6], [True], "equally long"),
        ([], [], "non-empty"),
        ([0.5, 1.5], [True, False], r"\[0, 1\]"),
        ([0.5, np.nan], [True, False], r"\[0, 1\]"),
    ],
)
def test_calibration_rejects_bad_input(confidences, correct, message):
    with pytest.raises(ValueError, match=message):
        calibration(np.array(confidences), np.array(correct, dtype=bool))
