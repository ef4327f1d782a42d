"""The error types fedcomp raises for bad input.

Each one is a ``ValueError`` subclass carrying one readable message, so a caller (the CLI,
a strategy) can catch it and report it without a traceback from deep inside.
"""

from collections.abc import Callable


class FedcompError(ValueError):
    """Base class of every error fedcomp raises on purpose."""


class ConfigError(FedcompError):
    """An unknown setting, or a value that setting does not accept."""


class DatasetError(FedcompError):
    """A dataset that is unknown, missing on disk, or malformed."""


class ModelError(FedcompError):
    """A model name that is unknown or a model that cannot be built."""


class PayloadError(FedcompError):
    """A compressed payload that is malformed, truncated, corrupted or does not fit the model."""


class ReplyError(FedcompError):
    """A client's reply the server cannot use: records of the wrong kinds, a bad example count,
    non-finite values, or an update above the norm bound."""


class DivergedError(FedcompError):
    """A run that diverged: its global model became non-finite, its central test loss non-finite or far
    above the initial model's, or every sampled client failed for several rounds in a row. ``round`` is the
    round it was found in."""

    def __init__(self, message: str, round: int) -> None:  # noqa: A002 - the round, as everywhere in fedcomp
        super().__init__(message)
        self.round = round


def accepted_by(parse: Callable[[str], object]) -> Callable[[str], bool]:
    """A setting's check from its parser: whether ``parse`` takes the text without a :class:`ConfigError`."""

    def accepts(text: str) -> bool:
        try:
            parse(text)
        except ConfigError:
            return False
        return True

    return accepts
