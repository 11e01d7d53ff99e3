"""Typed errors. A `UserError` is the user's to fix: adapters turn it into HTTP 4xx (A1111's error
shape) or `gr.Error`; anything else is a bug or an environment failure."""

from __future__ import annotations


class SdWebuiError(Exception):
    """Base class of every error this project raises on purpose."""


class UserError(SdWebuiError):
    """Bad input from a user or client. `status_code` is what the HTTP adapter answers."""

    status_code: int = 400

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class NotFoundError(UserError):
    """A named thing (checkpoint, VAE, sampler, option) does not exist."""

    status_code = 404


class ValidationError(UserError):
    """A value is out of range or of the wrong type."""

    status_code = 422


class SettingsError(UserError):
    """A command-line flag, environment variable or settings file is invalid."""


class ModelFileError(UserError):
    """A model file cannot be read: corrupt, truncated, not a model, or refused as unsafe."""


class UnsafeModelFileError(ModelFileError):
    """A pickle-based file asked for something outside the allow-list; nothing of it was executed."""


class UnknownModelError(ModelFileError):
    """The tensors in a file match no known model family."""


class ModelLoadError(SdWebuiError):
    """Loading a model failed; the previously loaded model stays active."""


class NansException(SdWebuiError):
    """A model produced NaNs: half precision overflowed or the GPU does not support it; the message
    says which model part and what to try. Named as A1111's, since API clients see the class name
    in the 500 answer's `error`."""


class ForbiddenError(UserError):
    """The request is understood but not allowed (e.g. a restricted setting through the API)."""

    status_code = 403


class OutOfMemoryError(UserError):
    """A job ran out of (GPU or CPU) memory; the worker freed what it could and goes on serving.
    HTTP 507; named as torch's error, which A1111 clients see in the answer's `error`."""

    status_code = 507


class DiskFullError(UserError):
    """A write ran out of disk space; nothing half-written was left behind (writes go through a
    temp file). HTTP 507."""

    status_code = 507
