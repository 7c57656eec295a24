"""Celery message signing for real: a worker with EXPORT_MESSAGE_SIGNING_* set runs what a
client holding a trusted key sends, and refuses (never runs) a plain JSON message, a message
signed by a key it does not trust, and an unsigned control command; it lives through them.

The worker and its redis-server are this module's own. Keys and certificates are made here,
throwaway, with ``cryptography``.
"""

from __future__ import annotations

import datetime
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from celery import Celery
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from worker.celery import CPU_QUEUE, ExportApp, use_message_signing
from worker.settings import Settings

from .services import client_app, running_worker, tail, worker_env
from .test_faults import Store, own_redis, slow_spec

#: Seconds a refused message is given to run anyway, before the test looks for its traces.
GRACE = 3.0


def make_signer(folder: Path, name: str) -> tuple[Path, Path]:
    """A throwaway RSA key and a self-signed certificate for it, as PEM files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def signing_env(key: Path, cert: Path, store: Path) -> dict[str, str]:
    return {
        "EXPORT_MESSAGE_SIGNING_KEY": str(key),
        "EXPORT_MESSAGE_SIGNING_CERT": str(cert),
        "EXPORT_MESSAGE_SIGNING_CERT_STORE": str(store),
    }


@pytest.fixture()
def restore_serializers() -> Iterator[None]:
    """Celery's signing registers the ``auth`` serializer for the whole process: undo it."""
    from kombu.serialization import registry

    default = registry._default_encode
    yield
    registry._set_default_serializer("json")
    registry._default_encode = default
    if "auth" in registry._encoders:
        registry.unregister("auth")


def signed_client(broker: str, env: dict[str, str]) -> Celery:
    """A client of ``broker`` that signs what it sends, configured as the service's app is."""
    with mock.patch.dict(os.environ, {"CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": broker, **env}):
        settings = Settings()
    app = ExportApp("signed-client", broker=broker, backend=broker, export_settings=settings, set_as_current=False)
    use_message_signing(app, settings)
    return app


def publish_signed_by(app: Celery, key: Path, cert: Path, spec: dict[str, Any]) -> str:
    """An ``export_model`` message signed by ``key`` (whatever the worker trusts), sent raw with kombu."""
    from celery.security.certificate import Certificate
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer

    task_id = str(uuid.uuid4())
    message = app.amqp.as_task_v2(task_id, "worker.tasks.export_model", args=[spec])
    body = SecureSerializer(PrivateKey(key.read_text()), Certificate(cert.read_text()), None, "sha256").serialize(
        message.body
    )
    with app.connection_for_write() as connection:
        connection.Producer().publish(
            body,
            exchange="",
            routing_key=CPU_QUEUE,
            headers=message.headers,
            content_type="application/data",
            content_encoding="utf-8",
            serializer=None,
            **message.properties,
        )
    return task_id


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_signing_worker_runs_signed_jobs_and_refuses_the_rest(
    moto_process_endpoint: str, tmp_path: Path, restore_serializers: None
) -> None:
    import redis

    trusted = tmp_path / "trusted"
    key, cert = make_signer(tmp_path / "client", "export-client")
    trusted.mkdir()
    (trusted / cert.name).write_bytes(cert.read_bytes())
    rogue_key, rogue_cert = make_signer(tmp_path / "rogue", "rogue-client")
    signing = signing_env(key, cert, trusted)
    store = Store(moto_process_endpoint)
    data = tmp_path / "redis"
    data.mkdir()
    with own_redis(data, "--save", "", "--appendonly", "no") as (port, _):
        broker = f"redis://127.0.0.1:{port}/0"
        env = worker_env(broker, moto_process_endpoint, **signing)
        log_path = tmp_path / "worker.log"
        signed = signed_client(broker, signing)
        unsigned = client_app(broker)
        queue = redis.Redis.from_url(broker)
        with running_worker(signed, env, log_path, concurrency=1) as proc:
            # The attack: whoever can write to Redis sends a job in plain JSON, or signed by a
            # key of its own; and an unsigned control command to stop the worker.
            plain_bucket, rogue_bucket, good_bucket = store.bucket(), store.bucket(), store.bucket()
            plain = unsigned.send_task("worker.tasks.export_model", args=[slow_spec(plain_bucket, 1, 0)], queue="cpu")
            rogue_id = publish_signed_by(unsigned, rogue_key, rogue_cert, slow_spec(rogue_bucket, 2, 0))
            wait_for(lambda: queue.llen(CPU_QUEUE) == 0, 30, "the worker to take both messages off the queue")
            unsigned.control.broadcast("shutdown")
            time.sleep(GRACE)
            assert proc.poll() is None, f"the worker obeyed an unsigned shutdown:\n{tail(log_path)}"

            # The legitimate case, sent after the refused ones on the same queue and worker.
            good = signed.send_task("worker.tasks.export_model", args=[slow_spec(good_bucket, 3, 0)], queue="cpu")
            result = good.get(timeout=120)
            store.check_export(good_bucket, result)
            assert signed.control.ping(timeout=2), "the worker stopped answering signed pings"
            assert proc.poll() is None

            # Neither refused job ran: nothing in their buckets, no state, no result.
            for bucket in (plain_bucket, rogue_bucket):
                assert store.keys(bucket) == [], f"a refused job wrote to {bucket}"
                assert store.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
            for task_id in (plain.id, rogue_id):
                assert unsigned.AsyncResult(task_id).state == "PENDING", f"a refused job {task_id} has a state"
        log = log_path.read_text(errors="replace")
        queue.close()
    # The worker said why: the plain job's content type is not accepted, the rogue signer is
    # not among the trusted certificates, the plain control command is not accepted either.
    assert "Received invalid task message: Refusing to deserialize untrusted content" in log, tail(log_path)
    assert "Unknown certificate: b'rogue-client" in log, tail(log_path)
    assert "Can't decode message body: ContentDisallowed" in log, tail(log_path)
    for task_id in (plain.id, rogue_id):
        assert f"[{task_id}] received" not in log
    assert f"Task worker.tasks.export_model[{good.id}] received" in log
