"""Flower, in docker-compose.yml and deploy/k8s, asks for a login that comes from outside the
files (a required compose variable, a Kubernetes Secret), and no deployment file holds a
password or key of its own."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.unit.deploy.files import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    K8S,
    PLACEHOLDER,
    k8s_containers,
    k8s_named,
    read_env_file,
    required_value,
)

#: Flower's own ways of requiring a login (its options, or the same as FLOWER_ variables).
AUTH_OPTIONS = ("basic_auth", "auth")


def flower_auth(argv: list[str], env: dict[str, Any]) -> list[str]:
    """The login options a Flower command line and environment give."""
    given = [a for a in argv if a.split("=", 1)[0].lstrip("-").replace("-", "_") in AUTH_OPTIONS]
    given += [f"FLOWER_{o.upper()}" for o in AUTH_OPTIONS if env.get(f"FLOWER_{o.upper()}") not in (None, "")]
    return given


def test_compose_flower_requires_a_login_from_outside_the_file(services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]
    env = flower.get("environment", {})
    assert flower_auth(flower.get("command", []), env), "Flower has no login"
    # ${FLOWER_BASIC_AUTH:?...}: no default, so compose starts nothing until .env sets it.
    assert env["FLOWER_BASIC_AUTH"] == required_value("FLOWER_BASIC_AUTH"), "Flower's login has a default"
    env_file = read_env_file(ENV_EXAMPLE)
    assert "FLOWER_BASIC_AUTH" not in {**env_file.active, **env_file.commented}, ".env.example gives Flower a login"


def test_k8s_flower_requires_a_login_from_the_secret() -> None:
    flowers = [(w, c) for w, c in k8s_containers() if c["name"] == "flower"]
    assert flowers, "no Flower under deploy/k8s"
    secret = k8s_named("Secret", "export-worker-secrets")["stringData"]
    for _, container in flowers:
        env = {item["name"]: item for item in container.get("env", [])}
        login = env.get("FLOWER_BASIC_AUTH")
        assert login is not None, "Flower has no login"
        assert "value" not in login, "Flower's login is written in the manifest"
        ref = login["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "export-worker-secrets" and not ref.get("optional", False), "an optional login"
        assert PLACEHOLDER.search(secret[ref["key"]]), "the Secret template holds a real login"
        assert flower_auth(container.get("args", []), {"FLOWER_BASIC_AUTH": "from the Secret"})


#: How the files write a login where they explain it.
DOCUMENTED_LOGIN = "user:password"
#: Text that is a secret wherever it appears: a private key, an AWS key id, a password in a URL.
SECRET_LITERALS = (
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
)
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s\"'`]+")
LOGIN = re.compile(r"\b(FLOWER_BASIC_AUTH|basic[_-]auth)\b[\"']?\s*[:=](?!\?)\s*[\"']?([^\s\"'$]+)")


def deployment_files() -> list[Path]:
    return [COMPOSE_FILE, ENV_EXAMPLE, *sorted(K8S.glob("*.yaml"))]


def test_no_secret_literal_in_the_deployment_files() -> None:
    for path in deployment_files():
        text = path.read_text(encoding="utf-8")
        for pattern in SECRET_LITERALS:
            assert not pattern.search(text), f"{path.name}: {pattern.pattern}"
        for url in URL.findall(text):
            password = urlsplit(url).password
            assert password is None or PLACEHOLDER.search(password), f"{path.name}: a password in {url}"
        for _, value in LOGIN.findall(text):
            assert value == DOCUMENTED_LOGIN or PLACEHOLDER.search(value), (
                f"{path.name}: a Flower login written in the file: {value}"
            )
