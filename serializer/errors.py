"""The errors the serializer raises: one root, one class per cause."""

from __future__ import annotations


class SerializerError(Exception):
    """Raised when the serializer cannot do what it was asked; the root of this package's errors."""


class InvalidURI(SerializerError, ValueError):
    """Raised when a string is not an ``s3://bucket/key`` URI of the kind asked for."""


class InvalidExtraFile(SerializerError, ValueError):
    """Raised when an extra file's name or contents break the archive's naming rules."""


class UploadFailed(SerializerError):
    """Raised when an object could not be written; the upload was aborted and nothing is visible."""


class ObjectExists(UploadFailed):
    """Raised when a conditional publish found the key already taken by another writer."""


class ArchiveError(SerializerError):
    """Raised when a TorchScript archive could not be saved or its zip structure not read."""


class ManifestError(SerializerError, ValueError):
    """Raised when a manifest is missing, malformed or does not match its artifact.

    ``summary``, where given, says the same without quoting the manifest's values (what a
    bulk run's report, sent where its sender picks, may carry)."""

    def __init__(self, message: str, *, summary: str | None = None) -> None:
        super().__init__(message)
        self.summary = summary or message


class SignatureError(ArchiveError):
    """Raised when an export's signature does not let a consumer trust it; ``kind`` says
    which: ``unsigned`` (no signature), ``altered`` (the signed bytes changed), ``foreign``
    (signed by a key that is not trusted) or ``invalid`` (not a signature of this format)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
