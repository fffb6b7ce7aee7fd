"""Errors raised when reading or writing quantized data."""

from __future__ import annotations

__all__ = ["FormatError", "ModelMismatchError"]


class FormatError(ValueError):
    """A packed stream or a file is truncated, corrupted, or not in the expected format.

    >>> issubclass(FormatError, ValueError)
    True
    """


class ModelMismatchError(ValueError):
    """A quantized state or file does not fit the model it is loaded into.

    >>> issubclass(ModelMismatchError, ValueError)
    True
    """
