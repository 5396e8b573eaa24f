"""The exception tree: everything the package raises on purpose derives from :class:`KernFinetuneError`, which
the CLI turns into a one-line reason and the class's ``exit_code``. Messages never contain passwords or tokens.
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
    "DoorError",
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
    """The named labeling task is not in the export (the message lists those that are)."""


class SelectionError(KernFinetuneError):
    """The selected labels do not allow training."""


class SyncBusyError(KernFinetuneError):
    """Another sync of the same project is running (lock held)."""

    exit_code = 3


class HostError(KernFinetuneError):
    """A refinery(-compatible) host could not be used."""


class AuthError(HostError):
    """Login failed or the host refused the credentials (UNRECOGNIZED_USER, FORBIDDEN_USER)."""


class ProjectNotFoundError(HostError):
    """The host does not know the project id (PROJECT_NOT_FOUND)."""


class HostUnavailableError(HostError):
    """The host could not be reached or kept failing (connection errors, timeouts, 5xx)."""


class DoorError(HostError):
    """The embedding could not be written through its door (the model door's create, wait or delete; a snapshot's
    checks); the embedding in use stays."""
