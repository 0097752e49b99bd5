"""mnist-digits: recognize handwritten digits with a Keras-equivalent CNN in PyTorch.

from mnist_digits import load_model
model = load_model()                  # the shipped default model, robust
model.predict(["seven.jpg", image])   # paths, PIL images or arrays -> list of Prediction
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Prediction", "Recognizer", "__version__", "load_model"]

if TYPE_CHECKING:
    from .predict import Prediction, Recognizer, load_model


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import mnist_digits` (for its version, say) does not load torch.
    if name in ("load_model", "Prediction", "Recognizer"):
        from . import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'mnist_digits' has no attribute {name!r}")
