"""The exception tree of kern-finetune.

Everything the package raises on purpose derives from :class:`KernFinetuneError`, so a caller can catch
one class. The CLI turns any of them into a one-line reason and a non-zero exit code.

::

    KernFinetuneError
    ├── ConfigError            bad arguments or options (fix the command line / config)
    ├── ExportError            the record export cannot be read or is malformed
    │   └── TaskNotFoundError  the named labeling task is not in the export (lists those that are)
    ├── SelectionError         the labels do not allow training (too few labels or classes)
    ├── SyncBusyError          another sync of the same project holds the lock
    └── HostError              talking to a refinery(-compatible) host failed
        ├── AuthError          login failed or the credentials were refused (UNRECOGNIZED_USER, FORBIDDEN_USER)
        ├── ProjectNotFoundError  the project id is unknown to the host (PROJECT_NOT_FOUND)
        ├── HostUnavailableError  connection refused/dropped, timeouts or 5xx, after the retries
        └── PushError          the host refused the embedding upload; the old embedding stays served

Messages never contain passwords or tokens.
"""

from __future__ import annotations

__all__ = [
    "KernFinetuneError",
    "ConfigError",
    "ExportError",
    "TaskNotFoundError",
    "SelectionError",
    "SyncBusyError",
    "HostError",
    "AuthError",
    "ProjectNotFoundError",
    "HostUnavailableError",
    "PushError",
]


class KernFinetuneError(Exception):
    """Base class of every error kern-finetune raises on purpose."""

    exit_code: int = 1


class ConfigError(KernFinetuneError):
    """Bad arguments or options."""

    exit_code = 2


class ExportError(KernFinetuneError):
    """The record export cannot be read or is malformed."""


class TaskNotFoundError(ExportError):
    """The named labeling task is not in the export."""


class SelectionError(KernFinetuneError):
    """The selected labels do not allow training."""


class SyncBusyError(KernFinetuneError):
    """Another sync of the same project is running (lock held)."""

    exit_code = 3


class HostError(KernFinetuneError):
    """A refinery(-compatible) host could not be used."""


class AuthError(HostError):
    """Login failed or the host refused the credentials."""


class ProjectNotFoundError(HostError):
    """The host does not know the project id."""


class HostUnavailableError(HostError):
    """The host could not be reached or kept failing (connection errors, timeouts, 5xx)."""


class PushError(HostError):
    """The host refused the embedding upload; the previously served embedding stays in use."""
