"""The import graph: reading digits loads none of the training code."""

import subprocess
import sys

TRAINING = ("mnist_digits.train", "mnist_digits.resume", "mnist_digits.augment", "mnist_digits.distributed")

# Every inference entry point used once, in a fresh interpreter, then the modules it loaded.
INFERENCE = """
import sys
import numpy as np
from PIL import Image
from mnist_digits import load_model
from mnist_digits.data import Split
from mnist_digits.evaluate import evaluate_model
from mnist_digits.export import export_onnx
from mnist_digits.serve import ServeConfig, create_app
recognizer = load_model()
image = Image.new("L", (64, 64), 255)
image.paste(0, (28, 10, 36, 54))
recognizer.predict([image])
recognizer.read_number([image])
evaluate_model(recognizer.model, Split(np.zeros((4, 28, 28), np.uint8), np.arange(4, dtype=np.uint8)))
create_app(ServeConfig(feedback_db=__import__("pathlib").Path(sys.argv[1])))
print(" ".join(sorted(name for name in sys.modules if name.startswith("mnist_digits"))))
"""


def test_predicting_evaluating_serving_and_exporting_load_no_training_module(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", INFERENCE, str(tmp_path / "feedback.sqlite3")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split()
    assert {"mnist_digits.predict", "mnist_digits.serve", "mnist_digits.export"} <= set(loaded)
    assert [name for name in TRAINING if name in loaded] == []
