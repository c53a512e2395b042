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


class SearchSpaceMismatchError(ConfigError):
    """A saved search was started with a different search space than the one requested."""
