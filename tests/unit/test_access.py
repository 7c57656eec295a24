"""A spec's and a bulk run's locations against the deployment's scopes (worker/access.py):
each field refused by name, before any request to the store, on every path that runs a spec."""

from __future__ import annotations

from typing import Any

import pytest

from worker.access import check_run_scopes, check_spec_scopes
from worker.bulk import Action, Planner
from worker.bulk.selection import Candidate
from worker.errors import ScopeError
from worker.export import run_export
from worker.settings import Settings
from worker.spec import parse_spec

READ = "s3://team-a/inputs"
WRITE = "s3://team-a/exports"


class NoStore:
    """An S3 client that fails the test on any use: a refusal must send nothing."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        raise AssertionError(f"the store was asked {name!r}")


def scoped(**changes: Any) -> Settings:
    return Settings(allowed_builders=("worker.examples",), read_scopes=READ, write_scopes=WRITE, **changes)


def spec_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "tiny",
        "builder": "worker.examples:tiny_classifier",
        "weights": f"{READ}/tiny/w.pt",
        "extra_files": {
            "labels.txt": {"uri": f"{READ}/tiny/labels.txt"},
            "README.md": {"text": "inline: no location"},
            "note.txt": "inline too",
        },
        "destination": f"{WRITE}/models",
    }
    data.update(changes)
    return data


#: field of the refusal -> the spec change that puts it out of scope
OUTSIDE = {
    "weights": {"weights": "s3://team-b/private/w.pt"},
    "extra_files.labels.txt": {"extra_files": {"labels.txt": {"uri": "s3://team-b/private/secret.txt"}}},
    "destination": {"destination": "s3://team-b/models"},
}


def test_a_spec_inside_its_scopes_passes() -> None:
    check_spec_scopes(parse_spec(spec_data()), scoped())
    check_spec_scopes(parse_spec(spec_data(weights=None, extra_files={})), scoped())


@pytest.mark.parametrize("field", sorted(OUTSIDE))
def test_each_field_outside_its_scope_is_refused_by_name(field: str) -> None:
    spec = parse_spec(spec_data(**OUTSIDE[field]))
    rule = "EXPORT_WRITE_SCOPES" if field == "destination" else "EXPORT_READ_SCOPES"
    with pytest.raises(ScopeError) as refused:
        check_spec_scopes(spec, scoped())
    assert str(refused.value).startswith(f"{field}: s3://team-b/")
    assert str(refused.value).endswith(f"is outside {rule}")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"weights": f"{READ}/../../team-b/private/w.pt"}, "weights"),
        ({"extra_files": {"x.txt": {"uri": f"{READ}/./x.txt"}}}, "extra_files.x.txt"),
        ({"extra_files": {"x.txt": {"uri": f"{READ}//x.txt"}}}, "extra_files.x.txt"),
        ({"destination": f"{WRITE}/../../team-b"}, "destination"),
    ],
)
def test_navigation_segments_are_refused_even_unscoped(changes: dict[str, Any], field: str) -> None:
    spec = parse_spec(spec_data(**changes))
    for settings in (scoped(), Settings(read_scopes="*", write_scopes="*")):
        with pytest.raises(ScopeError, match=f"^{field}: .* segment"):
            check_spec_scopes(spec, settings)


def test_a_read_scope_does_not_allow_writing_nor_a_write_scope_reading() -> None:
    with pytest.raises(ScopeError, match=r"^destination: .* is outside EXPORT_WRITE_SCOPES"):
        check_spec_scopes(parse_spec(spec_data(destination=f"{READ}/models")), scoped())
    with pytest.raises(ScopeError, match=r"^weights: .* is outside EXPORT_READ_SCOPES"):
        check_spec_scopes(parse_spec(spec_data(weights=f"{WRITE}/w.pt")), scoped())


@pytest.mark.parametrize("field", sorted(OUTSIDE))
def test_run_export_refuses_before_any_request(field: str) -> None:
    store = NoStore()
    with pytest.raises(ScopeError, match=f"^{field}: "):
        run_export(parse_spec(spec_data(**OUTSIDE[field])), settings=scoped(), client=store)  # type: ignore[arg-type]
    assert store.calls == []


@pytest.mark.parametrize("field", sorted(OUTSIDE))
def test_a_bulk_run_counts_a_spec_outside_its_scopes_invalid_without_reading(field: str) -> None:
    store = NoStore()
    planner = Planner(store, scoped(), "if-stale")  # type: ignore[arg-type]
    spec = parse_spec(spec_data(**OUTSIDE[field]))
    decision = planner.decide(Candidate(source=f"{READ}/catalog.jsonl:1", spec=spec))
    assert decision.action is Action.INVALID
    assert decision.reason.startswith(f"{field}: ")
    assert store.calls == []


def test_a_bulk_runs_source_and_report_are_checked() -> None:
    check_run_scopes(f"{READ}/catalog.jsonl", f"{WRITE}/_reports/run.json", scoped())
    check_run_scopes("/srv/catalogs/a.jsonl", f"{WRITE}/_reports/run.json", scoped())  # on disk: not an S3 location
    with pytest.raises(ScopeError, match=r"^source: s3://team-b/models is outside EXPORT_READ_SCOPES$"):
        check_run_scopes("s3://team-b/models", f"{WRITE}/r.json", scoped())
    with pytest.raises(ScopeError, match=r"^report_to: s3://team-b/r/x\.json is outside EXPORT_WRITE_SCOPES$"):
        check_run_scopes(f"{READ}/models", "s3://team-b/r/x.json", scoped())
    with pytest.raises(ScopeError, match=r"^EXPORT_REPORT_PREFIX: "):
        check_run_scopes(f"{READ}/models", f"{READ}/_reexport/x.json", scoped(), report_field="EXPORT_REPORT_PREFIX")


def test_submit_export_refuses_with_the_submitters_settings_and_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import tasks

    sent: list[Any] = []
    monkeypatch.setattr(tasks.export_model, "apply_async", lambda *a, **k: sent.append((a, k)))
    for field, changes in OUTSIDE.items():
        with pytest.raises(ScopeError, match=f"^{field}: "):
            tasks.submit_export(spec_data(**changes), settings=scoped())
    assert sent == []
    tasks.submit_export(spec_data(), settings=scoped())
    assert len(sent) == 1, "the spec inside its scopes is sent"


def test_a_triton_repository_outside_the_write_scopes_is_refused_by_name() -> None:
    inputs = {"example_inputs": [{"shape": [2, 16], "dtype": "float32"}]}
    inside = parse_spec(spec_data(**inputs, triton={"repository": f"{WRITE}/triton", "version": 1}))
    check_spec_scopes(inside, scoped())
    outside = parse_spec(spec_data(**inputs, triton={"repository": "s3://team-b/triton", "version": 1}))
    with pytest.raises(ScopeError, match=r"triton\.repository"):
        check_spec_scopes(outside, scoped())
