"""The project's error type: a message written for the person at the keyboard."""


class MnistDigitsError(Exception):
    """An error whose message says what went wrong and what to do; the CLI prints it alone."""


class DataError(MnistDigitsError):
    """The dataset is missing, unreadable, or not the data it claims to be."""


class CheckpointError(MnistDigitsError):
    """A model or checkpoint file is missing, corrupt, or from another architecture."""


class InputError(MnistDigitsError):
    """An image or CSV file given to predict or train cannot be used as it is."""


class TrainingInterrupted(MnistDigitsError):
    """Training stopped on request (Ctrl-C, SIGTERM) after saving a resumable checkpoint."""
