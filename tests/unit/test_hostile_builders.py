"""The allow-list check refuses every spelling of a forbidden builder module before any import."""

from __future__ import annotations

import sys

import pytest

from tests.hostile_corpus import NEVER_IMPORT_SPELLINGS


def test_allow_list_check_refuses_forbidden_modules_before_any_import() -> None:
    from worker.builders import builder_digest, check_allowed
    from worker.errors import BuilderNotAllowed

    allowed = ("worker.examples", "tests.fixtures")
    for builder in NEVER_IMPORT_SPELLINGS:
        module = builder.partition(":")[0]
        if module == "tests.fixtures" or module.startswith("tests.fixtures.") or module.startswith("worker.examples"):
            continue
        with pytest.raises(BuilderNotAllowed, match="EXPORT_ALLOWED_BUILDERS"):
            check_allowed(builder, allowed)
        with pytest.raises(BuilderNotAllowed):
            builder_digest(builder, allowed)
    assert "tests.never_import" not in sys.modules
