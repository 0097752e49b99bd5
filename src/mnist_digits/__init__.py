"""mnist-digits: recognize handwritten digits with a Keras-equivalent CNN in PyTorch."""

__version__ = "0.1.0"
