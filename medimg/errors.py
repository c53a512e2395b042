"""Errors that medimg raises for people: each names what was wrong and what to do."""

from __future__ import annotations


class MedimgError(Exception):
    """Base class of every error medimg raises on purpose; pages and the CLI show its message."""


class ConfigError(MedimgError, ValueError):
    """A setting is out of range, of the wrong type, or inconsistent with another."""


class DatasetError(MedimgError):
    """The dataset as a whole cannot be used (no classes, too few images, bad manifest)."""


class ImageReadError(MedimgError):
    """One file could not be read as an image; the message is the reason shown next to the file."""


class RunError(MedimgError):
    """A run directory is missing, unfinished, busy or does not belong to this app."""


class RunsBusyError(RunError):
    """A new run would exceed the concurrency limit; `busy` holds the ids of the runs in progress, oldest last."""

    def __init__(self, message: str, busy: list[str]) -> None:
        super().__init__(message)
        self.busy = list(busy)


class TrainingError(MedimgError):
    """Fitting or searching ended without a usable model (the loss became NaN, no trial completed)."""


class ModelError(MedimgError):
    """A trained model cannot do what was asked of it (Grad-CAM of a model without a convolution, an export)."""


class SearchSpaceMismatchError(ConfigError):
    """A saved search was started with a different search space than the one requested."""


def first_line(error: BaseException, *, qualified: bool = False) -> str:
    """'Type: first line of the message' (at most 300 characters), or 'Type' for an empty message: how a library's
    exception is named in a one-line reason. `qualified` adds the module for non-builtin types ('struct.error')."""
    kind = type(error)
    name = f"{kind.__module__}.{kind.__qualname__}" if qualified and kind.__module__ != "builtins" else kind.__name__
    lines = str(error).strip().splitlines()
    return f"{name}: {lines[0][:300]}" if lines else name


def file_reason(error: Exception) -> str:
    """The one-line reason shown next to a file that could not be used, for any exception a per-file step caught.

    medimg's own errors already read as reasons. Anything else came out of a library (a decoder's RuntimeError, a
    struct.error from a malformed header): its type is named, because that is what a bug report needs, and only its
    first line is kept, because a library's message may run on for pages.
    """
    if isinstance(error, MedimgError):
        return str(error)
    return f"the decoder failed ({first_line(error, qualified=True)})"
