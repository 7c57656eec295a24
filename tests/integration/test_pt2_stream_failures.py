"""A ``.pt2`` save that fails half way through its upload, against a real moto server.

``torch.export.save`` calls the stream's ``write`` from inside torch's C++ writer: an
exception there leaves the writer inconsistent, its destructor fails and the C++ runtime
aborts the whole process (a dead Celery pool process, an open multipart upload).  Each
scenario runs in a child process, so a regression shows as the child's abort status
instead of taking the test run down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.conftest import object_keys, open_uploads

REPO = Path(__file__).resolve().parents[2]

#: Builds a program of about 32 MiB (8 x 4 MiB weights): with 5 MiB parts, several parts
#: are sent before the save ends.
_PROLOGUE = """
import os, signal, sys, time
import torch
from serializer.s3.client import make_s3_client
from serializer.pt2.export import export_pt2
from serializer.s3.options import UploadOptions

client = make_s3_client(endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1")
model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(8)])
program = torch.export.export(model, (torch.randn(2, 1024),))
options = UploadOptions(part_size=5 * 1024**2, max_in_flight=2)
"""


def _child(endpoint: str, body: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        ENDPOINT=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    script = textwrap.dedent(_PROLOGUE) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False
    )


def test_an_upload_that_fails_mid_save_raises_and_leaves_the_process_alive(
    moto_endpoint: str, s3: Any, bucket: str
) -> None:
    # The first part upload fails (the key is refused: the bucket is gone by then), while
    # the C++ writer is in the middle of the archive.
    s3.delete_bucket(Bucket=bucket)
    proc = _child(
        moto_endpoint,
        f"""
        try:
            export_pt2(program, "s3://{bucket}/m/model.pt2", client=client, options=options, strategy="stream")
        except Exception as exc:
            print("raised", type(exc).__name__, exc)
        print("alive")
        """,
    )
    assert proc.returncode == 0, f"the exporting process died ({proc.returncode}): {proc.stderr[-2000:]}"
    assert "raised UploadFailed" in proc.stdout
    assert "NoSuchBucket" in proc.stdout
    assert proc.stdout.rstrip().endswith("alive")


def test_a_time_limit_in_the_middle_of_the_save_aborts_the_upload_cleanly(
    moto_endpoint: str, s3: Any, bucket: str
) -> None:
    # As Celery's soft time limit does: an exception raised by a signal handler, here at
    # whatever Python line the save is in 0.15 s after it started (often the stream's write).
    proc = _child(
        moto_endpoint,
        f"""
        class SoftLimit(Exception):
            pass

        def expire(*args):
            raise SoftLimit("soft time limit")

        signal.signal(signal.SIGALRM, expire)
        throttled = client.upload_part

        def slow_part(**kwargs):
            time.sleep(0.2)
            return throttled(**kwargs)

        client.upload_part = slow_part
        signal.setitimer(signal.ITIMER_REAL, 0.15)
        try:
            export_pt2(program, "s3://{bucket}/m/model.pt2", client=client, options=options, strategy="stream")
            print("finished before the limit")
        except SoftLimit as exc:
            print("raised", exc)
        print("alive")
        """,
    )
    assert proc.returncode == 0, f"the exporting process died ({proc.returncode}): {proc.stderr[-2000:]}"
    assert "raised soft time limit" in proc.stdout, proc.stdout
    assert object_keys(s3, bucket) == [], "a partial object is visible"
    assert open_uploads(s3, bucket) == [], "the multipart upload was left open"
