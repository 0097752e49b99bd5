"""The project's error type: a message written for the person at the keyboard."""

from __future__ import annotations

# What an error's advice calls the choices it names, in the library's words. The command line
# passes its own words for them (its flags) to `explain`.
LIBRARY_TERMS = {
    "resume": "resume=True",
    "overwrite": "overwrite=True",
    "elsewhere": "another run directory",
    "same_data": "the same training data",
    "data_dir": "a data directory (data_dir, or $MNIST_DIGITS_DATA)",
    "no_verify": "verify=False",
    "fetch": "data.locate(fetch=True)",
    "feedback_db": "another database path",
    "feedback_export": "FeedbackStore.export_idx",
    "port": "another port",
    "allow_origin": "allowed_origins",
    "tta": "test-time augmentation",
    "record": "Recording",  # the test accuracy in the model file
    "val": "the validation split",
    "runtime": "runtime",  # load_model's arguments
    "precision": "precision",
    # ServeConfig's fields
    "max_connections": "max_connections",
    "header_timeout": "header_timeout",
    "body_timeout": "body_timeout",
    "keep_alive_timeout": "keep_alive_timeout",
}


class MnistDigitsError(Exception):
    """An error whose message says what went wrong and what to do; the CLI prints it alone.

    `advice` may name choices as placeholders ({resume}, {data_dir}, ... of LIBRARY_TERMS), which
    `explain` fills with the library's words, or with the command line's flags.
    """

    def __init__(self, message: str = "", *, advice: str = "") -> None:
        self.message, self.advice = message, advice
        super().__init__(self.explain())

    def explain(self, **terms: str) -> str:
        if not self.advice:
            return self.message
        advice = self.advice.format_map({**LIBRARY_TERMS, **terms})
        return f"{self.message} {advice}" if self.message else advice


class DataError(MnistDigitsError):
    """The dataset is missing, unreadable, or not the data it claims to be."""


class CheckpointError(MnistDigitsError):
    """A model or checkpoint file is missing, corrupt, or from another architecture."""


class InputError(MnistDigitsError):
    """An image or CSV file given to predict or train cannot be used as it is."""


class TrainingInterrupted(MnistDigitsError):
    """Training stopped on request (Ctrl-C, SIGTERM) after saving a resumable checkpoint."""
