"""The sweeper against in-process moto: stale uploads aborted, stale staging objects and orphan
archives deleted, everything young or not in the service's exact layout left alone; ages by
the store's clock; a message that asks for more than the deployment configured refused."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import object_keys, open_uploads
from worker.errors import SweepRefused
from worker.sweeper import sweep, sweep_scope

HOUR = 3600.0
FOLDER = "models/m/0123456789abcdef/torch-2.13.0_cpu"
#: The store's clock two hours ahead: what was just written is two hours old.
AHEAD = timedelta(hours=2)

Edit = Callable[[dict[str, Any]], None]


def _put(s3: Any, bucket: str, key: str) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=b"x")


def _on_listings(s3: Any, edit: Edit) -> None:
    """Have ``edit`` change every listing reply ``s3`` parses, as if the store had sent it so."""

    def hook(parsed: dict[str, Any], **_: Any) -> None:
        edit(parsed)

    for op in ("ListObjectsV2", "ListMultipartUploads"):
        s3.meta.events.register(f"after-call.s3.{op}", hook)


def _shift_date(parsed: dict[str, Any], delta: timedelta) -> None:
    headers = parsed["ResponseMetadata"]["HTTPHeaders"]
    date = datetime.strptime(headers["date"], "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=UTC) + delta
    headers["date"] = date.strftime("%a, %d %b %Y %H:%M:%S GMT")


@pytest.fixture()
def store_ahead(s3: Any) -> None:
    """The store's ``Date`` two hours after the real time: everything it holds is old."""
    _on_listings(s3, lambda parsed: _shift_date(parsed, AHEAD))


def _layout(s3: Any, bucket: str, uploads: bool = True) -> None:
    _put(s3, bucket, f"{FOLDER}/model.manifest.json")  # a complete export
    _put(s3, bucket, f"{FOLDER}/model.pt")
    _put(s3, bucket, f"{FOLDER}/model.pt.staging-0a1b2c3d4e5f")  # a replacement that died
    _put(s3, bucket, "models/n/fedcba9876543210/torch-2.13.0_cpu/model.pt")  # no manifest: orphan
    _put(s3, bucket, "models/weights/model.pt")  # not the service's layout
    _put(s3, bucket, "models/notes/model.pt.staging-x")  # not the service's layout either
    _put(s3, bucket, "other/x/0123456789abcdef/torch-1/model.pt")  # outside the prefix
    if uploads:
        s3.create_multipart_upload(Bucket=bucket, Key=f"{FOLDER}/model.pt")  # a dead export's
        s3.create_multipart_upload(Bucket=bucket, Key="models/weights/upload.bin")  # another client's
        s3.create_multipart_upload(Bucket=bucket, Key="other/upload.bin")  # outside the prefix


def test_stale_uploads_staging_objects_and_orphans_go(s3: Any, bucket: str, store_ahead: None) -> None:
    _layout(s3, bucket)
    report = sweep(s3, [f"s3://{bucket}/models"], older_than=HOUR)
    assert report.as_dict() == {"aborted_uploads": 1, "deleted_staging": 1, "deleted_orphans": 1, "recent_kept": 0}
    assert sorted(object_keys(s3, bucket)) == sorted(
        [
            f"{FOLDER}/model.manifest.json",
            f"{FOLDER}/model.pt",
            "models/weights/model.pt",
            "models/notes/model.pt.staging-x",
            "other/x/0123456789abcdef/torch-1/model.pt",
        ]
    )
    assert sorted(u["Key"] for u in open_uploads(s3, bucket)) == ["models/weights/upload.bin", "other/upload.bin"]


def test_nothing_young_is_touched(s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _layout(s3, bucket, uploads=False)
    before = sorted(object_keys(s3, bucket))
    # (moto dates every upload in 2010: a young one is listed by hand, dated by the store)
    young = {
        "Uploads": [{"Key": f"{FOLDER}/model.pt", "UploadId": "u", "Initiated": datetime.now(UTC)}],
        "ResponseMetadata": {"HTTPHeaders": {"date": _http_date(datetime.now(UTC))}},
    }
    _listed_uploads(s3, monkeypatch, young)
    report = sweep(s3, [f"s3://{bucket}/models/"], older_than=HOUR)
    # the young upload, the staging object and both archives (a young one is not looked into)
    assert report.as_dict() == {"aborted_uploads": 0, "deleted_staging": 0, "deleted_orphans": 0, "recent_kept": 4}
    assert sorted(object_keys(s3, bucket)) == before


def _http_date(moment: datetime) -> str:
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")


def _listed_uploads(s3: Any, monkeypatch: pytest.MonkeyPatch, page: dict[str, Any]) -> None:
    class Pages:
        def paginate(self, **_: Any) -> list[dict[str, Any]]:
            return [page]

    real = s3.get_paginator
    monkeypatch.setattr(s3, "get_paginator", lambda name: Pages() if name == "list_multipart_uploads" else real(name))


def test_a_dry_run_counts_and_removes_nothing(s3: Any, bucket: str, store_ahead: None) -> None:
    _layout(s3, bucket)
    before = sorted(object_keys(s3, bucket))
    report = sweep(s3, [f"s3://{bucket}/models"], older_than=HOUR, dry_run=True)
    assert (report.aborted_uploads, report.deleted_staging, report.deleted_orphans) == (1, 1, 1)
    assert sorted(object_keys(s3, bucket)) == before
    assert len(open_uploads(s3, bucket)) == 3


def test_an_upload_finished_meanwhile_is_not_an_error(s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key=f"{FOLDER}/model.pt")
    s3.abort_multipart_upload(Bucket=bucket, Key=f"{FOLDER}/model.pt", UploadId=upload["UploadId"])
    now = datetime.now(UTC)
    old = {"Key": f"{FOLDER}/model.pt", "UploadId": upload["UploadId"], "Initiated": now - timedelta(hours=5)}
    page = {"Uploads": [old], "ResponseMetadata": {"HTTPHeaders": {"date": _http_date(now)}}}
    _listed_uploads(s3, monkeypatch, page)
    assert sweep(s3, [f"s3://{bucket}/models"], older_than=HOUR).aborted_uploads == 1


# -- the exact layout -----------------------------------------------------------------------------


def test_a_complete_export_whose_listing_has_a_key_between_archive_and_manifest_is_kept(
    s3: Any, bucket: str, store_ahead: None
) -> None:
    # Listed in order: model.manifest.json, model.old.manifest.json, model.pt.  A sweeper that
    # remembers "the last manifest listed" takes the archive for an orphan; a HEAD of the
    # exact sibling manifest finds it.
    keys = [f"{FOLDER}/model.manifest.json", f"{FOLDER}/model.old.manifest.json", f"{FOLDER}/model.pt"]
    for key in keys:
        _put(s3, bucket, key)
    assert object_keys(s3, bucket) == keys
    report = sweep(s3, [f"s3://{bucket}/models"], older_than=HOUR)
    assert report.deleted_orphans == 0
    assert object_keys(s3, bucket) == keys


def test_an_archive_whose_manifest_cannot_be_looked_for_is_kept(
    s3: Any, bucket: str, store_ahead: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _put(s3, bucket, f"{FOLDER}/model.pt")

    def refused(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadObject")

    monkeypatch.setattr(s3, "head_object", refused)
    assert sweep(s3, [f"s3://{bucket}/models"], older_than=HOUR).deleted_orphans == 0
    assert object_keys(s3, bucket) == [f"{FOLDER}/model.pt"]


#: Keys that look like the service's but are not its exact layout: never deleted, never aborted.
LOOKALIKES = [
    "models/team/torch-2.13.0_cpu/model.pt",  # no 16-hex folder
    "models/m/0123456789abcdef/torch-x/model.pt",  # no torch version
    "models/m/0123456789ABCDEF/torch-2.13.0_cpu/model.pt",  # upper-case hex
    "models/m/0123456789abcde/torch-2.13.0_cpu/model.pt",  # 15 digits
    "models/m/0123456789abcdef/torch-2.13.0+cpu/model.pt",  # '+' is written '_'
    "models/m n/0123456789abcdef/torch-2.13.0_cpu/model.pt",  # a name the spec refuses
    "models/../0123456789abcdef/torch-2.13.0_cpu/model.pt",  # nor '..'
    f"{FOLDER}/model.pt.bak",
    f"{FOLDER}/model.pt.staging-x",
    f"{FOLDER}/model.pt.staging-0A1B2C3D4E5F",
    f"{FOLDER}/model.pt.staging-0a1b2c3d4e5f0",
    f"{FOLDER}/sub/model.pt",
]


def test_keys_outside_the_exact_layout_are_never_deleted(s3: Any, bucket: str, store_ahead: None) -> None:
    for key in LOOKALIKES:
        _put(s3, bucket, key)
    report = sweep(s3, [f"s3://{bucket}/models"], older_than=HOUR)
    assert report.as_dict() == {"aborted_uploads": 0, "deleted_staging": 0, "deleted_orphans": 0, "recent_kept": 0}
    assert sorted(object_keys(s3, bucket)) == sorted(LOOKALIKES)


def test_uploads_outside_the_exact_layout_are_never_aborted(s3: Any, bucket: str) -> None:
    # moto dates uploads in 2010: by the store's clock every one of them is stale.
    for key in [*LOOKALIKES, "models/weights/big.bin", f"{FOLDER}/model.pt"]:
        s3.create_multipart_upload(Bucket=bucket, Key=key)
    report = sweep(s3, [f"s3://{bucket}/models"], older_than=HOUR)
    assert report.aborted_uploads == 1  # the one in the layout
    assert sorted(u["Key"] for u in open_uploads(s3, bucket)) == sorted([*LOOKALIKES, "models/weights/big.bin"])


# -- the store's clock ----------------------------------------------------------------------------


def _shift_times(parsed: dict[str, Any], delta: timedelta) -> None:
    _shift_date(parsed, delta)
    for item in parsed.get("Contents", []):
        item["LastModified"] += delta


def test_ages_come_from_the_store_not_from_the_workers_clock(s3: Any, bucket: str) -> None:
    # The worker's clock two hours ahead of the store's: the store dates its replies and its
    # objects two hours before the worker's now.  By the store's clock the objects were just
    # written; a sweeper comparing them with its own clock would find them two hours old.
    _on_listings(s3, lambda parsed: _shift_times(parsed, -AHEAD))
    _layout(s3, bucket, uploads=False)
    before = sorted(object_keys(s3, bucket))
    report = sweep(s3, [f"s3://{bucket}/models"], older_than=HOUR)
    assert (report.deleted_staging, report.deleted_orphans, report.recent_kept) == (0, 0, 3)
    assert sorted(object_keys(s3, bucket)) == before


def test_without_a_date_the_newest_listed_time_stands_in(s3: Any, bucket: str) -> None:
    old = "models/n/fedcba9876543210/torch-2.13.0_cpu/model.pt"

    def edit(parsed: dict[str, Any]) -> None:
        del parsed["ResponseMetadata"]["HTTPHeaders"]["date"]
        for item in parsed.get("Contents", []):
            if item["Key"] == old:
                item["LastModified"] -= AHEAD

    _on_listings(s3, edit)
    young = "models/y/fedcba9876543210/torch-2.13.0_cpu/model.pt"
    _put(s3, bucket, old)
    _put(s3, bucket, young)
    report = sweep(s3, [f"s3://{bucket}/models"], older_than=HOUR)
    assert (report.deleted_orphans, report.recent_kept) == (1, 1)
    assert object_keys(s3, bucket) == [young]


# -- .pt2 keys ------------------------------------------------------------------------------------


def test_sweep_removes_pt2_orphans_and_staging_and_keeps_complete_exports(
    s3: Any, bucket: str, store_ahead: None
) -> None:
    orphan = "models/n/fedcba9876543210/torch-2.13.0_cpu/model.pt2"
    kept = [
        f"{FOLDER}/model.manifest.json",
        f"{FOLDER}/model.pt2",
        "models/weights/model.pt2",  # not the service's layout
        "models/notes/model.pt2.staging-x",  # nor this
    ]
    for key in [*kept, f"{FOLDER}/model.pt2.staging-0a1b2c3d4e5f", orphan]:
        _put(s3, bucket, key)
    report = sweep(s3, [f"s3://{bucket}/models"], older_than=HOUR)
    assert report.as_dict() == {"aborted_uploads": 0, "deleted_staging": 1, "deleted_orphans": 1, "recent_kept": 0}
    assert sorted(object_keys(s3, bucket)) == sorted(kept)


def test_sweep_tells_the_formats_apart_in_neighbouring_folders(s3: Any, bucket: str, store_ahead: None) -> None:
    # A TorchScript export, then a pt2 one whose manifest is missing, then a complete pt2 one.
    a, b, c = (f"models/m/{h * 16}/torch-2.13.0_cpu" for h in "abc")
    keys = [f"{a}/model.manifest.json", f"{a}/model.pt", f"{b}/model.pt2", f"{c}/model.manifest.json", f"{c}/model.pt2"]
    for key in keys:
        _put(s3, bucket, key)
    s3.create_multipart_upload(Bucket=bucket, Key=f"{b}/model.pt2")
    report = sweep(s3, [f"s3://{bucket}/models"], older_than=HOUR)
    assert (report.deleted_orphans, report.deleted_staging, report.aborted_uploads) == (1, 0, 1)
    assert sorted(object_keys(s3, bucket)) == sorted(k for k in keys if k != f"{b}/model.pt2")
    assert open_uploads(s3, bucket) == []


def test_young_pt2_objects_are_kept(s3: Any, bucket: str) -> None:
    _put(s3, bucket, f"{FOLDER}/model.pt2")
    _put(s3, bucket, f"{FOLDER}/model.pt2.staging-0a1b2c3d4e5f")
    report = sweep(s3, [f"s3://{bucket}/models"], older_than=HOUR)
    assert report.as_dict() == {"aborted_uploads": 0, "deleted_staging": 0, "deleted_orphans": 0, "recent_kept": 2}
    assert len(object_keys(s3, bucket)) == 2


# -- what a message may ask for -------------------------------------------------------------------


@pytest.fixture()
def requests(s3: Any) -> Iterator[list[str]]:
    """The bucket of every request ``s3`` sends."""
    seen: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        seen.append(str(params.get("Bucket")))

    s3.meta.events.register("provide-client-params.s3.*", record)
    yield seen


def _as_the_task_does(s3: Any, configured: list[str], prefixes: Any, older_than: Any) -> dict[str, int]:
    chosen, age = sweep_scope(configured, HOUR, prefixes, older_than)
    return sweep(s3, chosen, older_than=age).as_dict()


@pytest.mark.parametrize(
    ("asked", "older_than", "reason"),
    [
        pytest.param(["s3://{foreign}/models"], None, "outside EXPORT_SWEEP_PREFIXES", id="foreign-bucket"),
        pytest.param(["s3://{ours}/models", "s3://{foreign}"], None, "outside", id="one-foreign-among-ours"),
        pytest.param(["s3://{ours}"], None, "outside", id="wider-than-configured"),
        pytest.param(["s3://{ours}/models-other"], None, "outside", id="longer-name"),
        pytest.param(["s3://{ours}/models/../other"], None, "'..' segment", id="dot-dot"),
        pytest.param(["s3://{ours}/models"], 0.0, "under EXPORT_SWEEP_AFTER", id="shorter-age"),
        pytest.param(["s3://{ours}/models"], HOUR - 1, "under EXPORT_SWEEP_AFTER", id="a-second-shorter"),
        pytest.param(None, float("nan"), "a number of seconds", id="nan-age"),
        pytest.param("s3://{ours}/models", None, "a list of", id="a-string-not-a-list"),
    ],
)
def test_a_message_asking_for_more_than_configured_is_refused_and_touches_nothing(
    s3: Any, bucket: str, store_ahead: None, requests: list[str], asked: Any, older_than: Any, reason: str
) -> None:
    foreign = f"{bucket}-foreign"
    s3.create_bucket(Bucket=foreign)
    for target in (bucket, foreign):
        _layout(s3, target)
        s3.create_multipart_upload(Bucket=target, Key=f"{FOLDER}/model.pt2")
    counts = {target: (len(object_keys(s3, target)), len(open_uploads(s3, target))) for target in (bucket, foreign)}
    requests.clear()
    names = {"ours": bucket, "foreign": foreign}
    prefixes = asked.format(**names) if isinstance(asked, str) else None
    if isinstance(asked, list):
        prefixes = [uri.format(**names) for uri in asked]
    with pytest.raises(SweepRefused, match=reason):
        _as_the_task_does(s3, [f"s3://{bucket}/models"], prefixes, older_than)
    assert requests == []  # no request at all, to either bucket
    assert {target: (len(object_keys(s3, target)), len(open_uploads(s3, target))) for target in counts} == counts


def test_a_message_may_narrow_the_prefixes_and_lengthen_the_age(
    s3: Any, bucket: str, store_ahead: None, requests: list[str]
) -> None:
    _layout(s3, bucket)
    requests.clear()
    # Narrower: only models/n; the orphan there goes, the staging object in models/m stays.
    report = _as_the_task_does(s3, [f"s3://{bucket}/models"], [f"s3://{bucket}/models/n/"], HOUR)
    assert (report["deleted_orphans"], report["deleted_staging"], report["aborted_uploads"]) == (1, 0, 0)
    assert set(requests) == {bucket}
    # Longer than the store's two hours: nothing is stale.
    report = _as_the_task_does(s3, [f"s3://{bucket}/models"], None, 3 * HOUR)
    assert (report["deleted_staging"], report["aborted_uploads"]) == (0, 1)  # (moto's uploads are from 2010)
    assert f"{FOLDER}/model.pt.staging-0a1b2c3d4e5f" in object_keys(s3, bucket)
