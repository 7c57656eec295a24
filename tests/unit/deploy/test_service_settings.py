"""The settings every service of docker-compose.yml and deploy/k8s runs with: only known
EXPORT_ variables, a ConfigMap covering every setting, valid together, URLs that reach the
compose services."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.unit.deploy.files import (
    ENV_EXAMPLE,
    FIELD_OF_ENV,
    Runner,
    compose_command,
    compose_runners,
    env_names,
    every_env_name,
    k8s_named,
    read_env_file,
    settings_from,
)
from worker.settings import Settings


def test_every_export_variable_is_a_setting() -> None:
    unknown = {k: v for k, v in every_env_name().items() if k.startswith("EXPORT_") and k not in FIELD_OF_ENV}
    assert not unknown, f"not settings of worker.settings.Settings: {unknown}"


def test_configmap_covers_every_setting(k8s_docs: list[tuple[Path, dict[str, Any]]]) -> None:
    configmap = k8s_named("ConfigMap", "export-worker-config")
    text = next(path for path, doc in k8s_docs if doc is configmap).read_text(encoding="utf-8")
    secret_keys = set(k8s_named("Secret", "export-worker-secrets")["stringData"])
    for name in Settings.model_fields:
        names = env_names(name)
        assert any(n in text or n in secret_keys for n in names), f"neither ConfigMap nor Secret has {names}"
    for key, value in configmap["data"].items():
        name = FIELD_OF_ENV.get(key)
        if name is not None and Settings.model_fields[name].get_default(call_default_factory=True) is None:
            assert value != "", f"ConfigMap {key}: an empty value is not unset; leave it out"


def test_settings_are_valid_together(runner: Runner) -> None:
    try:
        settings = settings_from(runner.env)
    except ValueError as exc:
        raise AssertionError(f"{runner.where}: its settings are refused: {exc}") from exc
    assert settings.broker_url.startswith(("redis://", "rediss://")), f"{runner.where}: no Redis broker"


def test_compose_urls_reach_the_compose_services(services: dict[str, dict[str, Any]]) -> None:
    for runner in compose_runners():
        if not runner.ours:
            continue
        broker = urlsplit(settings_from(runner.env).broker_url)
        assert broker.hostname in services, f"{runner.where}: broker host {broker.hostname} is not a service"
        assert "redis-server" in compose_command(services[broker.hostname]), runner.where
        endpoint = urlsplit(runner.env["AWS_ENDPOINT_URL_S3"])
        s3 = services.get(endpoint.hostname or "")
        assert s3 is not None, f"{runner.where}: S3 endpoint {endpoint.hostname} is not a service"
        assert f"-s3.port={endpoint.port}" in compose_command(s3), f"{runner.where}: S3 port {endpoint.port}"
        buckets = [a.split("=", 1)[1] for a in compose_command(s3) if a.startswith("-bucket=")]
        for prefix in settings_from(runner.env).sweep_prefixes:
            assert urlsplit(prefix).hostname in buckets, f"{runner.where}: sweeps {prefix}, not a bucket made at start"
    assert (
        services["flower"]["environment"]["CELERY_BROKER_URL"] == read_env_file(ENV_EXAMPLE).active["CELERY_BROKER_URL"]
    ), "Flower watches another broker than the workers use"
