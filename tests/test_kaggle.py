"""Kaggle's Digit Recognizer CSVs: read with their shapes checked, submissions in the competition's format."""

import numpy as np
import pytest

from mnist_digits import kaggle
from mnist_digits.checkpoint import load_model
from mnist_digits.cli import main
from mnist_digits.errors import InputError

HEADER = ",".join(f"pixel{i}" for i in range(784))


def write_csv(path, images, labels=None, header=True):
    rows = [] if not header else [("label," if labels is not None else "") + HEADER]
    for index, image in enumerate(images):
        pixels = ",".join(str(v) for v in image.ravel())
        rows.append(f"{labels[index]},{pixels}" if labels is not None else pixels)
    path.write_text("\n".join(rows) + "\n")
    return path


def test_train_csv_round_trips_images_and_labels(tmp_path, test_digits):
    images, labels = test_digits.images[:30], test_digits.labels[:30]
    mnist = kaggle.read_train_csv(write_csv(tmp_path / "train.csv", images, labels))
    assert np.array_equal(mnist.train.images, images) and np.array_equal(mnist.train.labels, labels)
    assert len(mnist.test.labels) == 0  # Kaggle's digits include MNIST's test set: none to test on
    assert list(mnist.sha256) == ["train.csv"] and len(mnist.sha256["train.csv"]) == 64


def test_test_csv_with_or_without_header(tmp_path, test_digits):
    images = test_digits.images[:5]
    assert np.array_equal(kaggle.read_test_csv(write_csv(tmp_path / "a.csv", images)), images)
    assert np.array_equal(kaggle.read_test_csv(write_csv(tmp_path / "b.csv", images, header=False)), images)


@pytest.mark.parametrize(
    ("edit", "labelled", "message"),
    [
        (lambda rows: rows, False, "line 1 has 785 columns starting 'label,pixel0,pixel1'"),
        (lambda rows: [rows[0], rows[1] + ",0", rows[2]], True, "line 2 has 786 columns, expected 785"),
        (lambda rows: [rows[0], rows[1], rows[2][:-2]], True, "line 3"),
        (
            lambda rows: [rows[0], rows[1].replace(",0,", ",x,", 1)],
            True,
            "line 2 has 'x' where a whole number",
        ),
        (lambda rows: [rows[0], "12" + rows[1][1:]], True, "data row 1 has label 12"),
        (lambda rows: [rows[0], rows[1].replace(",0,", ",300,", 1)], True, "pixel outside 0-255"),
        (lambda rows: [rows[0]], True, "has no rows of pixels"),
        (lambda rows: [], True, "has no rows of pixels"),
    ],
    ids=[
        "test-read-as-train",
        "extra-column",
        "short-row",
        "not-a-number",
        "bad-label",
        "bad-pixel",
        "header",
        "empty",
    ],
)
def test_wrong_csv_shapes_are_one_clear_error(tmp_path, test_digits, edit, labelled, message):
    path = write_csv(tmp_path / "train.csv", test_digits.images[:2], test_digits.labels[:2])
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(InputError) as error:
        kaggle.read_csv(path, labelled=labelled)
    assert str(error.value).startswith(str(path)) and message in str(error.value)
    assert "\n" not in str(error.value)


def test_binary_and_missing_files(tmp_path):
    (tmp_path / "x.csv").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(InputError, match="not a text CSV"):
        kaggle.read_test_csv(tmp_path / "x.csv")
    with pytest.raises(InputError, match="no such file"):
        kaggle.read_test_csv(tmp_path / "absent.csv")


def test_submission_is_in_the_competition_format(tmp_path):
    path = tmp_path / "out" / "submission.csv"
    kaggle.write_submission(path, np.array([7, 2, 1]))
    assert path.read_text() == "ImageId,Label\n1,7\n2,2\n3,1\n"
    assert [p.name for p in path.parent.iterdir()] == ["submission.csv"]  # no .tmp left behind


class FixedAnswers:
    """A stand-in recognizer: answers 3 for inked rows, 8 unsure for blank ones; keeps its inputs."""

    threshold = 0.8

    def probabilities(self, inputs):
        self.inputs = inputs
        probs = np.full((len(inputs), 10), 0.01)
        inked = inputs.reshape(len(inputs), -1).max(1) > 0
        probs[inked, 3] = 0.91
        probs[~inked, 8] = 0.5
        return probs


def test_a_submission_predicts_every_row_on_inputs_scaled_to_0_1(tmp_path, test_digits):
    images = test_digits.images[:6].copy()
    images[[1, 4]] = 0  # blank rows still need an answer in a submission
    recognizer = FixedAnswers()
    submission = kaggle.predict_submission(
        recognizer, write_csv(tmp_path / "test.csv", images), tmp_path / "s.csv"
    )
    assert submission == kaggle.Submission(tmp_path / "s.csv", 6, 2)
    assert (tmp_path / "s.csv").read_text().splitlines()[1:] == ["1,3", "2,8", "3,3", "4,3", "5,8", "6,3"]
    assert recognizer.inputs.shape == (6, 28, 28) and recognizer.inputs.dtype == np.float32
    np.testing.assert_allclose(recognizer.inputs * 255, images, atol=1e-4)  # 0-255 read as 0-1


def test_cli_kaggle_submission_from_test_csv(tmp_path, test_digits, tiny_model_file, capsys):
    test_csv = write_csv(tmp_path / "test.csv", test_digits.images[:100])
    out = tmp_path / "submission.csv"
    assert main(["predict", "--model", str(tiny_model_file), "--kaggle", str(test_csv), "-o", str(out)]) == 0
    assert "wrote 100 predictions" in capsys.readouterr().out
    lines = out.read_text().splitlines()
    assert lines[0] == "ImageId,Label"
    assert [line.split(",")[0] for line in lines[1:]] == [str(i) for i in range(1, 101)]
    assert {line.split(",")[1] for line in lines[1:]} <= set("0123456789")


def test_cli_kaggle_with_a_bad_csv_is_one_error(tmp_path, tiny_model_file, capsys):
    bad = tmp_path / "test.csv"
    bad.write_text("pixel0,pixel1\n0,0\n")
    out = tmp_path / "submission.csv"
    assert main(["predict", "--model", str(tiny_model_file), "--kaggle", str(bad), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "test.csv" in err and err.count("\n") == 1
    assert not out.exists()


def test_train_on_a_kaggle_csv_reports_validation_not_test(tmp_path, mnist, capsys):
    images, labels = mnist.train.images[:300], mnist.train.labels[:300]
    train_csv = write_csv(tmp_path / "train.csv", images, labels)
    run = tmp_path / "run"
    argv = ["train", "--train-csv", str(train_csv), "--dry-run", "--epochs", "1", "--no-progress"]
    assert main([*argv, "--out", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "validation accuracy" in out and "held out from train.csv" in out
    assert "not measured on MNIST's test set" in out and "test accuracy" not in out
    assert (run / "model.safetensors").is_file()
    assert load_model(run / "model.safetensors").metadata["history"]  # curves for `report`


def test_an_ensemble_trained_on_a_kaggle_csv_is_joined(tmp_path, mnist, capsys):
    train_csv = write_csv(tmp_path / "train.csv", mnist.train.images[:300], mnist.train.labels[:300])
    run = tmp_path / "run"
    argv = ["train", "--train-csv", str(train_csv), "--dry-run", "--epochs", "1", "--no-progress"]
    assert main([*argv, "--ensemble", "2", "--out", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("held out from train.csv") == 2 and "test accuracy" not in out
    assert len(load_model(run / "ensemble.safetensors").members_metadata) == 2
