import numpy as np
import pytest

from mnist_digits import plots
from mnist_digits.data import Split
from mnist_digits.evaluate import class_metrics, confusion_matrix, evaluate_model, format_report
from mnist_digits.model import DigitNet, ModelConfig

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
