"""The feedback store: SQLite rows in, MNIST-format IDX files out, and back into training."""

import hashlib
import sqlite3

import numpy as np
import pytest

from mnist_digits import feedback, idx
from mnist_digits.cli import main
from mnist_digits.feedback import FeedbackError, FeedbackStore


def digit_image(value: int) -> np.ndarray:
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 10 + value : 14 + value] = 255  # a distinct bar per sample
    return image


def test_samples_are_stored_and_read_back_in_order(tmp_path):
    store = FeedbackStore(tmp_path / "deep" / "feedback.sqlite3")
    ids = [store.add(digit_image(i), label=i, predicted=(i + 1) % 10, model="tiny") for i in range(3)]
    assert ids == sorted(ids) and store.count() == 3
    samples = store.split()
    assert samples.images.shape == (3, 28, 28) and samples.images.dtype == np.uint8
    np.testing.assert_array_equal(samples.images[2], digit_image(2))
    assert samples.labels.tolist() == [0, 1, 2]
    with sqlite3.connect(store.path) as connection:
        row = connection.execute(
            "SELECT predicted, label, model, created FROM feedback WHERE id = ?", (ids[1],)
        )
        predicted, label, model, created = row.fetchone()
    assert (predicted, label, model) == (2, 1, "tiny") and created.endswith("+00:00")


@pytest.mark.parametrize(
    ("image", "label", "predicted"),
    [
        (np.zeros((28, 28), np.float32), 1, 1),  # not uint8
        (np.zeros((28, 27), np.uint8), 1, 1),  # not 28x28
        (np.zeros((28, 28), np.uint8), 10, 1),  # not a digit
        (np.zeros((28, 28), np.uint8), 1, -1),
    ],
)
def test_bad_samples_are_refused_before_reaching_the_database(tmp_path, image, label, predicted):
    store = FeedbackStore(tmp_path / "feedback.sqlite3")
    with pytest.raises(ValueError):
        store.add(image, label, predicted, "tiny")
    assert store.count() == 0


def test_export_writes_idx_files_that_read_back_identically(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.sqlite3")
    for i in range(5):
        store.add(digit_image(i), label=(7 * i) % 10, predicted=None, model="tiny")
    result = store.export_idx(tmp_path / "out")
    assert result.count == 5
    assert result.images.name == feedback.IMAGES_FILE and result.labels.name == feedback.LABELS_FILE
    images = idx.parse_idx(result.images.read_bytes(), idx.IMAGES_MAGIC, "images")
    assert images.shape == (5, 28, 28)
    back = feedback.read_idx(tmp_path / "out")
    np.testing.assert_array_equal(back.images, store.split().images)
    assert back.labels.tolist() == [0, 7, 4, 1, 8]
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_export_without_a_database_says_how_to_get_one(tmp_path):
    with pytest.raises(FeedbackError, match="no feedback database"):
        FeedbackStore(tmp_path / "missing.sqlite3").export_idx(tmp_path / "out")
    assert not (tmp_path / "missing.sqlite3").exists() and not (tmp_path / "out").exists()


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path):
    path = tmp_path / "feedback.sqlite3"
    path.write_bytes(b"not a database, just text" * 100)
    with pytest.raises(FeedbackError, match=r"feedback\.sqlite3.*another database path"):
        FeedbackStore(path).count()


def test_read_idx_refuses_mismatched_files(tmp_path):
    (tmp_path / feedback.IMAGES_FILE).write_bytes(idx.encode_idx(np.zeros((3, 28, 28), np.uint8)))
    (tmp_path / feedback.LABELS_FILE).write_bytes(idx.encode_idx(np.zeros(2, np.uint8)))
    with pytest.raises(FeedbackError, match="3 images but 2 labels"):
        feedback.read_idx(tmp_path)
    (tmp_path / feedback.LABELS_FILE).unlink()
    with pytest.raises(FeedbackError, match=r"Write the pair with FeedbackStore\.export_idx"):
        feedback.read_idx(tmp_path)


def test_feedback_samples_join_the_training_split_and_its_checksums(tmp_path):
    from mnist_digits.data import Mnist, Split

    store = FeedbackStore(tmp_path / "feedback.sqlite3")
    for i in range(3):
        store.add(digit_image(i), label=i + 5, predicted=None, model="tiny")
    store.export_idx(tmp_path / "extra")
    train = Split(np.full((4, 28, 28), 7, np.uint8), np.zeros(4, np.uint8))
    test = Split(np.zeros((2, 28, 28), np.uint8), np.ones(2, np.uint8))
    mnist = Mnist(train, test, tmp_path, {"train-images-idx3-ubyte": "abc"})
    joined = feedback.with_feedback_samples(mnist, tmp_path / "extra")
    assert joined.train.labels.tolist() == [0, 0, 0, 0, 5, 6, 7]
    np.testing.assert_array_equal(joined.train.images[:4], train.images)
    np.testing.assert_array_equal(joined.train.images[4:], store.split().images)
    assert joined.test is test and joined.directory == tmp_path
    assert joined.sha256["train-images-idx3-ubyte"] == "abc"
    extra_images = (tmp_path / "extra" / feedback.IMAGES_FILE).read_bytes()
    assert joined.sha256["extra-images"] == hashlib.sha256(extra_images).hexdigest()
    assert set(mnist.sha256) == {"train-images-idx3-ubyte"}  # the original is left as it was
    with pytest.raises(FeedbackError, match=r"Write the pair with FeedbackStore\.export_idx"):
        feedback.with_feedback_samples(mnist, tmp_path)


def test_cli_export(tmp_path, capsys):
    db = tmp_path / "feedback.sqlite3"
    FeedbackStore(db).add(digit_image(3), label=3, predicted=8, model="tiny")
    out = tmp_path / "exported"
    assert main(["feedback", "export", "--feedback-db", str(db), "--out", str(out)]) == 0
    assert "wrote 1 corrected samples" in capsys.readouterr().out
    assert feedback.read_idx(out).labels.tolist() == [3]
    assert (
        main(["feedback", "export", "--feedback-db", str(tmp_path / "none.sqlite3"), "--out", str(out)]) == 1
    )
    assert "no feedback database" in capsys.readouterr().err


def test_train_adds_exported_samples_to_the_training_images(tmp_path, monkeypatch, mnist_dir, capsys):
    monkeypatch.setenv("MNIST_DIGITS_DATA", str(mnist_dir))
    db = tmp_path / "feedback.sqlite3"
    for i in range(4):
        FeedbackStore(db).add(digit_image(i), label=i, predicted=None, model="tiny")
    FeedbackStore(db).export_idx(tmp_path / "extra")
    run = tmp_path / "run"
    argv = ["train", "--dry-run", "--no-progress", "--extra-idx", str(tmp_path / "extra"), "--out", str(run)]
    assert main(argv) == 0
    assert "Adding 4 samples" in capsys.readouterr().err
    from mnist_digits import checkpoint

    metadata = checkpoint.load_model(run / "model.safetensors").metadata
    assert {"extra-images", "extra-labels"} <= set(metadata["data_sha256"])
