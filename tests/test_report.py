import base64
import re

import numpy as np
import pytest

from mnist_digits.data import Split
from mnist_digits.evaluate import Evaluation, class_metrics, confusion_matrix, evaluate_model
from mnist_digits.model import DigitNet, ModelConfig
from mnist_digits.report import format_accuracy, model_details, wilson_interval, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EMBEDDED_PNG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')

# --- Wilson score interval -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion", method 3
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # the shipped reference model: 45 errors in 10,000
        (9955, 10000, 0.9940, 0.9966),
    ],
)
def test_wilson_interval_matches_published_values(successes, trials, low, high):
    assert wilson_interval(successes, trials) == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize(("successes", "trials"), [(9955, 10000), (3, 7), (500, 1000), (1, 10000)])
def test_wilson_interval_agrees_with_scipy(successes, trials):
    from scipy.stats import binomtest

    expected = binomtest(successes, trials).proportion_ci(0.95, method="wilson")
    assert wilson_interval(successes, trials) == pytest.approx((expected.low, expected.high), rel=1e-12)


@pytest.mark.parametrize("trials", [1, 2, 10, 10000])
def test_wilson_interval_at_none_and_all_stays_inside_0_1(trials):
    none_low, none_high = wilson_interval(0, trials)
    all_low, all_high = wilson_interval(trials, trials)
    assert none_low == 0.0 and 0.0 < none_high < 1.0
    assert all_high == 1.0 and 0.0 < all_low < 1.0
    assert all_low == pytest.approx(1 - none_high)  # symmetric


def test_wilson_interval_narrows_with_more_trials():
    low_small, high_small = wilson_interval(99, 100)
    low_large, high_large = wilson_interval(9900, 10000)
    assert high_large - low_large < high_small - low_small
    assert low_large < 0.99 < high_large


@pytest.mark.parametrize(("successes", "trials"), [(0, 0), (-1, 10), (11, 10)])
def test_wilson_interval_rejects_impossible_counts(successes, trials):
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(successes, trials)


# --- the HTML report -----------------------------------------------------------------------------


def synthetic_evaluation(count: int, errors: int, seed: int = 0) -> tuple[Evaluation, np.ndarray]:
    """An Evaluation with exactly `errors` wrong predictions, and random images to go with it."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 10).astype(np.int64)
    predictions = labels.copy()
    wrong = rng.choice(count, errors, replace=False)
    predictions[wrong] = (labels[wrong] + rng.integers(1, 10, errors)) % 10
    confidences = np.where(predictions == labels, rng.uniform(0.9, 1.0, count), rng.uniform(0.3, 0.9, count))
    confusion = confusion_matrix(labels, predictions)
    evaluation = Evaluation(
        accuracy=float((predictions == labels).mean()),
        loss=0.0135,
        count=count,
        per_class=class_metrics(confusion),
        confusion=confusion.tolist(),
        labels=labels,
        predictions=predictions,
        confidences=confidences.astype(np.float32),
    )
    return evaluation, rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)


def history(epochs: int) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "train_accuracy": 0.9 + e / 100,
            "val_loss": 1.2 / e,
            "val_accuracy": 0.91 + e / 100,
            "lr": 1e-3 / e,
            "seconds": 60.0,
        }
        for e in range(1, epochs + 1)
    ]


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in EMBEDDED_PNG.findall(page)]


@pytest.fixture(scope="module")
def reference_like_report(tmp_path_factory):
    """A report of 45 errors in 10,000, as the shipped model scores, with a hostile title."""
    evaluation, images = synthetic_evaluation(10_000, 45)
    path = tmp_path_factory.mktemp("report") / "report.html"
    written = write_report(
        evaluation,
        images,
        path,
        title='Reference <script>alert("x")</script> & co',
        histories=[history(3)],
        details={"model file": "runs/<ref>/model.safetensors", "members": "1"},
    )
    assert written == path
    return path, path.read_text(encoding="utf-8")


def test_report_states_accuracy_errors_and_confidence_interval(reference_like_report):
    _, page = reference_like_report
    assert "99.55% (45 errors of 10,000), 95% CI 99.40-99.66%" in page
    assert "0.0135" in page  # the mean loss
    assert "Expected calibration error" in page


def test_report_embeds_every_figure_as_a_png(reference_like_report):
    _, page = reference_like_report
    pngs = embedded_pngs(page)
    assert len(pngs) == 4  # confusion matrix, reliability diagram, training curves, misclassified digits
    assert page.count("<img ") == 4
    for png in pngs:
        assert png.startswith(PNG_MAGIC) and len(png) > 5000


def test_report_is_self_contained(reference_like_report):
    path, page = reference_like_report
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert re.findall(r'src="([^"]{0,22})', page) == ["data:image/png;base64,"] * 4
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert not list(path.parent.glob("*.tmp"))


def test_report_escapes_text(reference_like_report):
    _, page = reference_like_report
    assert "<title>Reference &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co</title>" in page
    assert "runs/&lt;ref&gt;/model.safetensors" in page


def test_report_per_class_table_and_training_summary(reference_like_report):
    _, page = reference_like_report
    assert page.count("<tr><td>") >= 10 + 1  # ten digits, one member
    assert "<td>3.0 min</td>" in page  # three epochs of 60 s


def test_report_without_history_or_errors_says_so(tmp_path):
    evaluation, images = synthetic_evaluation(200, 0)
    page = write_report(evaluation, images, tmp_path / "r.html", title="perfect").read_text()
    assert "No training history is recorded" in page
    assert "No test digit is misclassified" in page
    assert "100.00% (0 errors of 200), 95% CI 98.12-100.00%" in page
    assert len(embedded_pngs(page)) == 2  # confusion matrix and reliability diagram


def test_report_of_an_ensemble_draws_every_member_with_a_history(tmp_path):
    evaluation, images = synthetic_evaluation(300, 12)
    histories = [history(4), [], history(2)]
    path = write_report(evaluation, images, tmp_path / "r.html", title="ensemble", histories=histories)
    page = path.read_text()
    assert len(embedded_pngs(page)) == 4
    assert '<tr><td>2</td><td colspan="4">no history recorded</td></tr>' in page
    assert "<tr><td>3</td><td>2</td>" in page  # member 3 keeps its number: 2 epochs


def test_report_from_a_real_evaluation(tmp_path):
    """evaluate_model's output (float32 confidences, torch-made arrays) goes straight in."""
    rng = np.random.default_rng(2)
    split = Split(rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), (np.arange(60) % 10).astype(np.uint8))
    evaluation = evaluate_model(DigitNet(ModelConfig(channels=(4, 8, 8), hidden=16)), split)
    page = write_report(evaluation, split.images, tmp_path / "r.html", title="untrained").read_text()
    assert format_accuracy(evaluation) in page
    assert len(embedded_pngs(page)) == 2 + (evaluation.errors > 0)


def test_report_rejects_images_that_do_not_match_the_evaluation(tmp_path):
    evaluation, images = synthetic_evaluation(50, 5)
    with pytest.raises(ValueError, match="50 evaluated test images"):
        write_report(evaluation, images[:40], tmp_path / "r.html", title="t")
    assert not (tmp_path / "r.html").exists()


def test_model_details_describe_an_ensemble_by_its_members(tmp_path):
    from mnist_digits.checkpoint import LoadedModel
    from mnist_digits.ensemble import TTA_VIEWS

    evaluation, _ = synthetic_evaluation(120, 3)
    members = [
        {"train_config": {"recipe": "best"}, "environment": {"date": "2026-01-02"}},
        {"train_config": {"recipe": "lean"}},
        {"train_config": {"recipe": "best"}},
    ]
    ensemble = LoadedModel(None, {"members": members}, tmp_path / "e.safetensors")
    details = model_details(ensemble, evaluation, tmp_path / "mnist", tta=True)
    assert details["model"] == str(tmp_path / "e.safetensors")
    assert details["networks"] == "3 (probabilities averaged)" and details["recipe"] == "best, lean"
    assert details["trained"] == "2026-01-02"  # the first member's
    assert details["test-time augmentation"] == f"yes ({len(TTA_VIEWS)} views)"
    assert details["test set"] == f"{tmp_path / 'mnist'} (120 images)"

    single = LoadedModel(None, {"note": "no settings recorded"}, tmp_path / "m.safetensors")
    details = model_details(single, evaluation, tmp_path)
    assert details["networks"] == "1" and details["test-time augmentation"] == "no"
    assert details["recipe"] == details["trained"] == "unknown"


def test_making_figures_leaves_the_users_matplotlib_alone():
    """No pyplot, no backend switched: a notebook's interactive plots keep working."""
    import subprocess
    import sys

    script = (
        "import sys, numpy as np\n"
        "from mnist_digits import evaluate, plots, report\n"
        "bins = evaluate.calibration(np.array([0.9, 0.6]), np.array([True, False]))\n"
        "assert plots.png_bytes(plots.reliability_figure(bins)).startswith(b'\\x89PNG')\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
