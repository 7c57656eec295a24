"""The errors an export job raises: one root, one class per cause.

Every class here is permanent (retrying cannot help); transient S3 and broker errors
keep their botocore / redis types and are retried by the task.
"""

from __future__ import annotations


class ExportError(Exception):
    """Raised when an export cannot be done; the root of this package's errors."""


class SpecError(ExportError, ValueError):
    """Raised when a spec does not validate; the message names each bad field."""

    #: Each problem as (top-level field, or "spec"; the kind of error), naming no value:
    #: what a report may say of a spec read from a file.
    problems: tuple[tuple[str, str], ...] = ()


class BuilderNotAllowed(ExportError):
    """Raised when a spec's builder lies outside ``EXPORT_ALLOWED_BUILDERS``; it is never imported."""


class BuildFailed(ExportError):
    """Raised when the builder could not be imported or called, or its weights not loaded."""


class ScriptingFailed(ExportError):
    """Raised when ``torch.jit.script`` or ``torch.jit.trace`` rejects the module."""


class TorchExportFailed(ExportError):
    """Raised when ``torch.export.export`` cannot capture the module (format ``pt2``)."""


class CaptureFailed(ExportError):
    """Raised when ``method: auto`` tried every way of capturing the module and none both
    captured it and passed verification; the message gives each attempt's reason."""


class DeviceUnavailable(ExportError):
    """Raised when the spec's device does not exist on this worker (e.g. ``cuda`` on a CPU host)."""


class VerificationFailed(ExportError):
    """Raised when the reloaded archive's outputs differ from the eager module's beyond tolerance."""


class ExportConflict(ExportError):
    """Raised when another export holds the same keys and did not finish in time."""


class ScopeError(SpecError):
    """Raised when a spec or a run names an S3 location outside ``EXPORT_READ_SCOPES`` /
    ``EXPORT_WRITE_SCOPES``, or one with ``.``, ``..`` or empty path segments; nothing is sent
    to that location."""


class SweepRefused(ExportError, ValueError):
    """Raised when a sweep is asked for prefixes outside ``EXPORT_SWEEP_PREFIXES`` or an age
    under ``EXPORT_SWEEP_AFTER``: a message may narrow the sweep, never widen it; nothing is swept."""


class SigningKeyError(ExportError, ValueError):
    """Raised when the configured signing key or trusted keys cannot be used; the message
    names the setting or file and the cause, never the key."""
