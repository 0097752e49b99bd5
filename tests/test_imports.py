"""The import graph: reading digits loads none of the training code, and no module imports itself
through others."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mnist_digits"

TRAINING = (
    "mnist_digits.train",
    "mnist_digits.runs",
    "mnist_digits.recipes",
    "mnist_digits.optim",
    "mnist_digits.resume",
    "mnist_digits.augment",
    "mnist_digits.distributed",
)

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
# runtime torch: on auto, the server would time the runtimes for `best` as it starts (seconds)
create_app(ServeConfig(feedback_db=__import__("pathlib").Path(sys.argv[1]), runtime="torch"))
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
    assert {"mnist_digits.runtimes", "mnist_digits.runtime_choice"} <= set(loaded)  # auto's too
    assert [name for name in TRAINING if name in loaded] == []


def _imports(path: Path) -> set[str]:
    """The package's modules that `path` imports, at the top or inside functions (not for typing only)."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])

    visit(ast.parse(path.read_text()).body)
    return {name for name in found if (PACKAGE / f"{name}.py").exists()}


def test_no_module_imports_itself_through_others():
    graph = {path.stem: _imports(path) for path in PACKAGE.glob("*.py")}
    assert {"train", "recipes"} <= graph["runs"]  # the graph is read, not empty

    def cycle_from(start: str) -> list[str] | None:
        paths = [[start]]
        while paths:
            path = paths.pop()
            for name in sorted(graph[path[-1]]):
                if name == start:
                    return [*path, name]
                if name not in path:
                    paths.append([*path, name])
        return None

    assert [cycle for module in sorted(graph) if (cycle := cycle_from(module))] == []
