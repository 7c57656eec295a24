"""What a job may touch: the S3 locations a spec or a bulk run names, checked against the
deployment's ``EXPORT_READ_SCOPES`` and ``EXPORT_WRITE_SCOPES`` before any request is sent.

Checked when a spec is submitted, and again on the worker at the start of an export, of a
bulk run (its selection and report location) and for each spec a bulk run reads back.  A
destination is a write scope's business alone: the export's own manifest and archive are
also read there (to skip, replace or verify), and nothing else is.
"""

from __future__ import annotations

from .scopes import check_read, check_write
from .settings import Settings
from .spec import ExportSpec, ExtraURI


def check_spec_scopes(spec: ExportSpec, settings: Settings) -> None:
    """Refuse ``spec`` unless its weights and extra files lie in the read scopes and its
    destination (and Triton repository, where it names one) in the write scopes.

    Raises:
        ScopeError: the first field out of scope (``extra_files.labels.txt: s3://other/x is
            outside EXPORT_READ_SCOPES``), or a location with ``.``, ``..`` or empty segments.
    """
    if spec.weights is not None:
        check_read(settings.read_scopes, spec.weights, "weights")
    for name, source in spec.extra_files.items():
        if isinstance(source, ExtraURI):
            check_read(settings.read_scopes, source.uri, f"extra_files.{name}")
    check_write(settings.write_scopes, spec.destination, "destination")
    if spec.triton is not None:
        check_write(settings.write_scopes, spec.triton.repository, "triton.repository")


def check_run_scopes(source: str, report_uri: str, settings: Settings, *, report_field: str = "report_to") -> None:
    """Refuse a bulk run whose selection (an ``s3://`` prefix or catalog; a catalog on disk is
    not an S3 location) lies outside the read scopes, or whose report lies outside the
    write scopes.

    Raises:
        ScopeError: naming ``source`` or ``report_field`` and the rule.
    """
    if source.startswith("s3://"):
        check_read(settings.read_scopes, source, "source")
    check_write(settings.write_scopes, report_uri, report_field)
