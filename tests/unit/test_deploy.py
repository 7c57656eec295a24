"""The deployment files agree with the code.

docker-compose.yml, .env.example, deploy/Dockerfile.*, deploy/k8s/*.yaml and deploy/README.md
are parsed (nothing is built or started) and checked against worker.settings.Settings, the
Celery app's queues, Celery's own command-line parser and exportctl's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import click
import pytest
import yaml
from celery import Celery
from celery.bin.base import CLIContext
from celery.bin.celery import celery as celery_cli
from packaging.version import Version
from pydantic import AliasChoices

from serializer.s3.parts import parse_size
from worker import cli
from worker.celery import CPU_QUEUE, GPU_QUEUE
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILES = {"cpu": DEPLOY / "Dockerfile.cpu", "cuda": DEPLOY / "Dockerfile.cuda"}
#: The name of the images built from deploy/Dockerfile.* (registry and tag aside).
OUR_IMAGE = "export-worker"
QUEUES = {CPU_QUEUE, GPU_QUEUE}
#: Tokens that end a command inside a shell string.
SHELL_OPERATORS = {">", ">>", "<", "|", "||", "&&", ";", "&", "2>&1"}
#: Options of `celery worker` that must not override the EXPORT_ settings.
FORBIDDEN_WORKER_OPTIONS = {"time_limit", "soft_time_limit", "beat"}


# --- Settings --------------------------------------------------------------------------------


def env_names(name: str) -> list[str]:
    """The environment names of a Settings field: its aliases, else EXPORT_<FIELD>."""
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [f"EXPORT_{name.upper()}"]


FIELD_OF_ENV = {env: name for name in Settings.model_fields for env in env_names(name)}
ALIASED = {name for name in Settings.model_fields if env_names(name) != [f"EXPORT_{name.upper()}"]}


def settings_from(env: dict[str, str]) -> Settings:
    """Settings as a process with exactly this environment reads them."""
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings()


def default_settings() -> Settings:
    return settings_from({})


# --- .env files and compose interpolation ----------------------------------------------------

ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
COMMENTED_ASSIGNMENT = re.compile(r"^#\s*([A-Z_][A-Z0-9_]*)=(.*)$")


@dataclass
class EnvFile:
    active: dict[str, str] = field(default_factory=dict)
    commented: dict[str, str] = field(default_factory=dict)
    undocumented: list[str] = field(default_factory=list)


def read_env_file(path: Path) -> EnvFile:
    """An env file as Compose reads it; also its commented-out assignments, and the
    assignments that have no descriptive comment right above them."""
    parsed = EnvFile()
    previous = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        commented = COMMENTED_ASSIGNMENT.match(line)
        active = ASSIGNMENT.match(line)
        if commented or active:
            match = commented or active
            assert match is not None
            key, value = match.groups()
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            (parsed.commented if commented else parsed.active)[key] = value
            if not previous.startswith("#") or COMMENTED_ASSIGNMENT.match(previous):
                parsed.undocumented.append(key)
        previous = line
    return parsed


INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, seen: set[str]) -> Any:
    """Compose's interpolation with an empty environment: ``${X:-default}`` is its default,
    ``$$`` a literal ``$``. A variable without a default is an error (it would be empty)."""
    if isinstance(value, dict):
        return {k: interpolate(v, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, seen) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(3)
        seen.add(name)
        if match.group(2) is None:
            raise AssertionError(f"docker-compose.yml uses ${{{name}}} without a default")
        return match.group(2)

    return INTERPOLATION.sub(replace, value)


COMPOSE_VARIABLES: set[str] = set()
COMPOSE: dict[str, Any] = interpolate(yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8")), COMPOSE_VARIABLES)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment: its required env files, then ``environment``. Optional env
    files (a developer's .env) are left out, so the result does not depend on the machine."""
    env: dict[str, str] = {}
    files = service.get("env_file", [])
    for entry in [files] if isinstance(files, str | dict) else files:
        path, required = (entry, True) if isinstance(entry, str) else (entry["path"], entry.get("required", True))
        if required:
            env.update(read_env_file(ROOT / path).active)
    extra = service.get("environment", {})
    if isinstance(extra, list):
        extra = dict(item.split("=", 1) for item in extra)
    env.update({k: "" if v is None else str(v) for k, v in extra.items()})
    return env


# --- Dockerfiles -----------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def exec_form(self, keyword: str) -> list[str]:
        forms = self.all(keyword)
        if not forms:
            return []
        value = json.loads(forms[-1])
        assert isinstance(value, list), f"{keyword} must be in exec (JSON) form: {forms[-1]}"
        return [str(v) for v in value]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]
    text: str

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def arg(self, name: str) -> str:
        """An ARG's default, wherever it is declared."""
        for stage in [None, *self.stages]:
            lines = self.args if stage is None else dict(_arg_defaults(stage.all("ARG")))
            if name in lines:
                return lines[name]
        raise AssertionError(f"no ARG {name} with a default")


def _arg_defaults(args: list[str]) -> list[tuple[str, str]]:
    return [(a.split("=", 1)[0], a.split("=", 1)[1]) for a in args if "=" in a]


def read_dockerfile(path: Path) -> Dockerfile:
    text = path.read_text(encoding="utf-8")
    logical: list[str] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], words[0])
            stages.append(Stage(base, words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        elif not stages:
            assert keyword == "ARG", f"{path.name}: only ARG may come before the first FROM"
            args.update(_arg_defaults([rest]))
        else:
            stages[-1].instructions.append((keyword, rest))
    return Dockerfile(args, stages, text)


DOCKER = {kind: read_dockerfile(path) for kind, path in DOCKERFILES.items()}


# --- Kubernetes ------------------------------------------------------------------------------

K8S_FILES = sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*.yml"))
K8S_DOCS: list[tuple[Path, dict[str, Any]]] = [
    (path, doc)
    for path in K8S_FILES
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
    if isinstance(doc, dict)
]


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in K8S_DOCS if doc.get("kind") == kind]


def k8s_named(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in k8s_objects(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} named {name} under deploy/k8s, found {len(found)}"
    return found[0]


WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def k8s_containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container of every workload."""
    return [
        (doc, container)
        for _, doc in K8S_DOCS
        if doc.get("kind") in WORKLOADS
        for container in pod_spec(doc)["containers"]
    ]


def k8s_env(container: dict[str, Any]) -> dict[str, str]:
    """A container's environment: envFrom ConfigMaps and Secrets (the Secret template), then env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(k8s_named("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        if "secretRef" in source:
            env.update(k8s_named("Secret", source["secretRef"]["name"]).get("stringData", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = k8s_named("Secret", ref["name"])["stringData"][ref["key"]]
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = k8s_named("ConfigMap", ref["name"])["data"][ref["key"]]
    return {k: str(v) for k, v in env.items()}


# --- Images and commands ---------------------------------------------------------------------


def image_parts(image: str) -> tuple[str, str | None]:
    """(repository without registry, tag) of an image reference."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else None
    repository = name[: len(name) - len(tag) - 1] if tag else name
    return repository.rsplit("/", 1)[-1], tag or digest or None


def our_dockerfile(image: str) -> Dockerfile | None:
    """The Dockerfile an image of ours is built from (by its tag's suffix), else None."""
    repository, tag = image_parts(image)
    if repository != OUR_IMAGE:
        return None
    kinds = [kind for kind in DOCKER if tag and tag.endswith(f"-{kind}")]
    assert len(kinds) == 1, f"image {image}: its tag must end in one of {sorted(DOCKER)}"
    return DOCKER[kinds[0]]


def program(argv: list[str]) -> list[str]:
    """The command without its init wrapper (``tini --``)."""
    if argv[:1] == ["tini"]:
        argv = argv[1:]
        if argv[:1] == ["--"]:
            argv = argv[1:]
    return argv


def as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def compose_command(service: dict[str, Any]) -> list[str]:
    image = service.get("image", "")
    dockerfile = our_dockerfile(image) if image else None
    entrypoint = as_list(service["entrypoint"]) if "entrypoint" in service else None
    if entrypoint is None:
        entrypoint = dockerfile.final.exec_form("ENTRYPOINT") if dockerfile else []
    if "command" in service:
        command = as_list(service["command"])
    else:
        command = dockerfile.final.exec_form("CMD") if dockerfile and "entrypoint" not in service else []
    return program(entrypoint + command)


def k8s_command(container: dict[str, Any]) -> list[str]:
    dockerfile = our_dockerfile(container["image"])
    entrypoint = container.get("command")
    if entrypoint is None:
        entrypoint = dockerfile.final.exec_form("ENTRYPOINT") if dockerfile else []
    args = container.get("args")
    if args is None and "command" not in container:
        args = dockerfile.final.exec_form("CMD") if dockerfile else []
    return program([*entrypoint, *(args or [])])


def shell_commands(argv: list[str]) -> list[list[str]]:
    """The commands a health check or probe runs: ``sh -c "a | b"`` gives [a, b]."""
    if argv[:1] in (["CMD"], ["CMD-SHELL"]):
        argv = argv[1:] if argv[0] == "CMD" else ["sh", "-c", " ".join(argv[1:])]
    if argv[:2] in (["sh", "-c"], ["/bin/sh", "-c"]):
        commands: list[list[str]] = [[]]
        for token in shlex.split(argv[2]):
            if token in SHELL_OPERATORS:
                commands.append([])
            else:
                commands[-1].append(token)
        return [c for c in commands if c and c[0] != "/dev/null"]
    return [argv]


@dataclass
class CeleryCall:
    app: str | None
    sub: str
    params: dict[str, Any]
    extra: list[str]


_CELERY_GLOBAL_WITH_VALUE = {
    opt for p in celery_cli.params if isinstance(p, click.Option) and not p.is_flag for opt in p.opts + p.secondary_opts
}
_CELERY_GLOBAL = {opt for p in celery_cli.params for opt in p.opts + p.secondary_opts}


def split_celery(argv: list[str]) -> tuple[str | None, str, list[str]]:
    """(app, subcommand, the subcommand's arguments) of a ``celery ...`` command line."""
    assert argv[0] == "celery", argv
    app, index = None, 1
    while index < len(argv) and argv[index].startswith("-"):
        option, has_value, value = argv[index].partition("=")
        assert option in _CELERY_GLOBAL, f"{argv}: celery has no global option {option}"
        if option in _CELERY_GLOBAL_WITH_VALUE and not has_value:
            index += 1
            value = argv[index]
        if option in ("-A", "--app"):
            app = value
        index += 1
    assert index < len(argv), f"{argv}: no celery subcommand"
    return app, argv[index], argv[index + 1 :]


def parse_celery(argv: list[str], image: str) -> CeleryCall:
    """Parse a ``celery ...`` command line with Celery's own parser (no app is loaded)."""
    app, sub, rest = split_celery(argv)
    if sub not in celery_cli.commands:
        # Flower's subcommand is installed by its own image, not by this project.
        assert sub == "flower" and image_parts(image)[0] == "flower", f"{argv}: celery has no subcommand {sub!r}"
        return CeleryCall(app, sub, {}, [])
    parent = click.Context(celery_cli, obj=CLIContext(app=Celery(set_as_current=False), no_color=True, workdir=None))
    try:
        ctx = celery_cli.commands[sub].make_context(sub, list(rest), parent=parent)
    except click.ClickException as exc:
        raise AssertionError(f"{argv}: {exc.format_message()}") from exc
    return CeleryCall(app, sub, dict(ctx.params), list(ctx.args))


class _Parsed(BaseException):
    """Raised instead of running an exportctl command once its arguments parsed."""


def check_exportctl(argv: list[str]) -> argparse.Namespace:
    """Parse an ``exportctl ...`` command line with exportctl's own parser, running nothing."""
    assert argv[0] == "exportctl", argv
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Parsed(parse_args(self, *args, **kwargs))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop):
        try:
            cli.main(argv[1:])
        except _Parsed as parsed:
            namespace: argparse.Namespace = parsed.args[0]
            return namespace
        except SystemExit as exc:
            raise AssertionError(f"exportctl refuses {argv} (exit {exc.code})") from exc
    raise AssertionError(f"exportctl {argv} did not parse its arguments")


@dataclass
class Runner:
    """One place that runs a command: its image, command, environment, and how it stops."""

    where: str
    image: str
    argv: list[str]
    env: dict[str, str]
    grace: float | None
    checks: list[list[str]]
    check_timeout: float | None
    gpus: int | str | None

    @property
    def ours(self) -> bool:
        return our_dockerfile(self.image) is not None

    def celery(self) -> CeleryCall | None:
        return parse_celery(self.argv, self.image) if self.argv[:1] == ["celery"] else None


def parse_duration(value: str | int | float) -> float:
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a compose duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def compose_gpus(service: dict[str, Any]) -> int | str | None:
    """The GPUs a compose service reserves: a count, or what it says instead (``all``, a
    device without the nvidia driver or the gpu capability)."""
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    gpus = [d for d in devices if d.get("driver") == "nvidia" or "gpu" in d.get("capabilities", [])]
    if not gpus:
        return None
    for device in gpus:
        if device.get("driver") != "nvidia" or "gpu" not in device.get("capabilities", []):
            return f"not an NVIDIA GPU reservation: {device}"
        if not isinstance(device.get("count"), int):
            return f"count {device.get('count')!r}, not a number"
    return sum(int(d["count"]) for d in gpus)


def compose_runners() -> list[Runner]:
    runners = []
    for name, service in SERVICES.items():
        health = service.get("healthcheck", {})
        runners.append(
            Runner(
                where=f"docker-compose.yml:{name}",
                image=service.get("image", ""),
                argv=compose_command(service),
                env=compose_env(service),
                grace=parse_duration(service["stop_grace_period"]) if "stop_grace_period" in service else 10.0,
                checks=shell_commands(as_list(health["test"])) if "test" in health else [],
                check_timeout=parse_duration(health["timeout"]) if "timeout" in health else None,
                gpus=compose_gpus(service),
            )
        )
    return runners


def k8s_runners() -> list[Runner]:
    runners = []
    for workload, container in k8s_containers():
        probes = [container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in container]
        checks = [c for p in probes if "exec" in p for c in shell_commands(p["exec"]["command"])]
        gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        runners.append(
            Runner(
                where=f"deploy/k8s {workload['metadata']['name']}/{container['name']}",
                image=container["image"],
                argv=k8s_command(container),
                env=k8s_env(container),
                grace=float(pod_spec(workload).get("terminationGracePeriodSeconds", 30)),
                checks=checks,
                check_timeout=min((float(p.get("timeoutSeconds", 1)) for p in probes), default=None),
                gpus=gpus if gpus is None or isinstance(gpus, str) else int(gpus),
            )
        )
    return runners


RUNNERS = compose_runners() + k8s_runners()
OUR_RUNNERS = [r for r in RUNNERS if r.ours]


def is_worker(runner: Runner) -> bool:
    return runner.argv[:1] == ["celery"] and split_celery(runner.argv)[1] == "worker"


def workers(runners: list[Runner] | None = None) -> list[Runner]:
    """The runners that run ``celery worker`` (parsed when asked: a bad command line fails a test)."""
    return [r for r in RUNNERS if is_worker(r)] if runners is None else [r for r in runners if is_worker(r)]


def worker_queues(call: CeleryCall) -> set[str]:
    queues = call.params.get("queues") or []
    return {q.strip() for item in queues for q in item.split(",") if q.strip()}


# --- .env.example ----------------------------------------------------------------------------


def test_env_example_lists_every_setting_with_its_default() -> None:
    env = read_env_file(ENV_EXAMPLE)
    for name, info in Settings.model_fields.items():
        names = env_names(name)
        listed = [n for n in names if n in env.active or n in env.commented]
        assert listed, f".env.example does not list {' or '.join(names)}"
        if name in ALIASED:
            continue
        (env_name,) = names
        if info.get_default(call_default_factory=True) is None:
            assert env_name in env.commented and env_name not in env.active, (
                f"{env_name} is unset by default: list it commented out (an empty value is not unset)"
            )
        else:
            assert env_name in env.active, f"{env_name} has a default: list it as {env_name}=<default>"
    exports = {k: v for k, v in env.active.items() if k.startswith("EXPORT_") and FIELD_OF_ENV.get(k) not in ALIASED}
    try:
        listed_settings = settings_from(exports).model_dump()
    except ValueError as exc:
        raise AssertionError(f".env.example: its values are refused: {exc}") from exc
    defaults = default_settings().model_dump()
    for name in Settings.model_fields.keys() - ALIASED:
        assert listed_settings[name] == defaults[name], (
            f".env.example: {env_names(name)[0]} gives {listed_settings[name]!r}, the default is {defaults[name]!r}"
        )


def test_env_example_values_are_written_plainly() -> None:
    env = read_env_file(ENV_EXAMPLE)
    for env_name, raw in env.active.items():
        name = FIELD_OF_ENV.get(env_name)
        if name is None or name in ALIASED:
            continue
        info = Settings.model_fields[name]
        default = info.get_default(call_default_factory=True)
        is_size = any(getattr(m, "func", None) is parse_size for m in info.metadata)
        if isinstance(default, bool):
            assert raw in ("true", "false"), f"{env_name}={raw}: write booleans as true/false"
        elif isinstance(default, int | float) and not is_size:
            assert re.fullmatch(r"\d+", raw), f"{env_name}={raw}: write seconds and counts as plain numbers"
        elif is_size:
            assert re.fullmatch(r"\d+(KiB|MiB|GiB)?", raw), f"{env_name}={raw}: a byte count, or with KiB/MiB/GiB"
        elif isinstance(default, list | tuple) and not default:
            assert raw in ("", "[]"), f"{env_name}={raw}: an empty list is written empty"


def test_env_example_explains_every_variable() -> None:
    env = read_env_file(ENV_EXAMPLE)
    assert not env.undocumented, f".env.example: no comment right above {env.undocumented}"
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "AWS_ENDPOINT_URL_S3"):
        assert env.active.get(name), f".env.example must set {name}"


PLACEHOLDER = re.compile(r"change.?me|replace.?me", re.IGNORECASE)


def test_no_real_secrets_in_templates() -> None:
    env = read_env_file(ENV_EXAMPLE).active
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert PLACEHOLDER.search(env[name]), f".env.example {name}={env[name]} is not a placeholder"
    secret = k8s_named("Secret", "export-worker-secrets")
    assert not secret.get("data"), "the Secret template holds placeholders in stringData, not encoded data"
    values = {f".env.example {k}": v for k, v in env.items()}
    for key, value in secret["stringData"].items():
        values[f"Secret {key}"] = value
        secret_part = urlsplit(value).password if "://" in value else value
        assert secret_part is None or PLACEHOLDER.search(secret_part), f"Secret {key} is not a placeholder"
    for where, value in values.items():
        assert not re.search(r"(AKIA|ASIA)[0-9A-Z]{16}", value), f"{where} looks like a real AWS key"
        password = urlsplit(value).password if "://" in value else None
        assert password is None or PLACEHOLDER.search(password), f"{where}: a password that is not a placeholder"


# --- Settings used by every service ----------------------------------------------------------


def every_env_name() -> dict[str, list[str]]:
    """Every environment variable the deployment files set, and where."""
    found: dict[str, list[str]] = {}
    env = read_env_file(ENV_EXAMPLE)
    for name in [*env.active, *env.commented]:
        found.setdefault(name, []).append(".env.example")
    for service_name, service in SERVICES.items():
        extra = service.get("environment", {})
        keys = [item.split("=", 1)[0] for item in extra] if isinstance(extra, list) else list(extra)
        for name in keys:
            found.setdefault(name, []).append(f"docker-compose.yml:{service_name}")
    for name in COMPOSE_VARIABLES:
        found.setdefault(name, []).append("docker-compose.yml interpolation")
    for _, doc in K8S_DOCS:
        if doc.get("kind") in ("ConfigMap", "Secret"):
            for name in [*doc.get("data", {}), *doc.get("stringData", {})]:
                found.setdefault(name, []).append(f"deploy/k8s {doc['kind']}")
    for _, container in k8s_containers():
        for item in container.get("env", []):
            found.setdefault(item["name"], []).append(f"deploy/k8s container {container['name']}")
    for kind, dockerfile in DOCKER.items():
        for stage in dockerfile.stages:
            for rest in stage.all("ENV"):
                for name in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", rest):
                    found.setdefault(name, []).append(f"Dockerfile.{kind}")
    return found


def test_every_export_variable_is_a_setting() -> None:
    unknown = {k: v for k, v in every_env_name().items() if k.startswith("EXPORT_") and k not in FIELD_OF_ENV}
    assert not unknown, f"not settings of worker.settings.Settings: {unknown}"


def test_configmap_covers_every_setting() -> None:
    configmap = k8s_named("ConfigMap", "export-worker-config")
    text = next(path for path, doc in K8S_DOCS if doc is configmap).read_text(encoding="utf-8")
    secret_keys = set(k8s_named("Secret", "export-worker-secrets")["stringData"])
    for name in Settings.model_fields:
        names = env_names(name)
        assert any(n in text or n in secret_keys for n in names), f"neither ConfigMap nor Secret has {names}"
    for key, value in configmap["data"].items():
        name = FIELD_OF_ENV.get(key)
        if name is not None and Settings.model_fields[name].get_default(call_default_factory=True) is None:
            assert value != "", f"ConfigMap {key}: an empty value is not unset; leave it out"


@pytest.mark.parametrize("runner", OUR_RUNNERS, ids=lambda r: r.where)
def test_settings_are_valid_together(runner: Runner) -> None:
    try:
        settings = settings_from(runner.env)
    except ValueError as exc:
        raise AssertionError(f"{runner.where}: its settings are refused: {exc}") from exc
    assert settings.broker_url.startswith(("redis://", "rediss://")), f"{runner.where}: no Redis broker"


def test_compose_urls_reach_the_compose_services() -> None:
    for runner in compose_runners():
        if not runner.ours:
            continue
        broker = urlsplit(settings_from(runner.env).broker_url)
        assert broker.hostname in SERVICES, f"{runner.where}: broker host {broker.hostname} is not a service"
        assert "redis-server" in compose_command(SERVICES[broker.hostname]), runner.where
        endpoint = urlsplit(runner.env["AWS_ENDPOINT_URL_S3"])
        s3 = SERVICES.get(endpoint.hostname or "")
        assert s3 is not None, f"{runner.where}: S3 endpoint {endpoint.hostname} is not a service"
        assert f"-s3.port={endpoint.port}" in compose_command(s3), f"{runner.where}: S3 port {endpoint.port}"
        buckets = [a.split("=", 1)[1] for a in compose_command(s3) if a.startswith("-bucket=")]
        for prefix in settings_from(runner.env).sweep_prefixes:
            assert urlsplit(prefix).hostname in buckets, f"{runner.where}: sweeps {prefix}, not a bucket made at start"
    assert (
        SERVICES["flower"]["environment"]["CELERY_BROKER_URL"] == read_env_file(ENV_EXAMPLE).active["CELERY_BROKER_URL"]
    ), "Flower watches another broker than the workers use"


# --- Commands --------------------------------------------------------------------------------


def readme_commands() -> list[list[str]]:
    """``celery ...`` and ``exportctl ...`` command lines in deploy/README.md's code blocks."""
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            for start, token in enumerate(tokens):
                if token in ("celery", "exportctl"):
                    command = []
                    for t in tokens[start:]:
                        if t in SHELL_OPERATORS:
                            break
                        command.append(t)
                    commands.append(command)
                    break
    return commands


def test_every_command_exists() -> None:
    checked = 0
    commands = [(r.where, r.image, argv) for r in RUNNERS for argv in [r.argv, *r.checks]]
    commands += [
        (f"Dockerfile.{k}", "", program(d.final.exec_form("ENTRYPOINT") + d.final.exec_form("CMD")))
        for k, d in DOCKER.items()
    ]
    commands += [("deploy/README.md", "", argv) for argv in readme_commands()]
    for where, image, argv in commands:
        if argv[:1] == ["celery"]:
            call = parse_celery(argv, image)
            if call.sub in ("worker", "beat"):
                assert call.app == "worker", f"{where}: `celery {call.sub}` needs `-A worker`"
            checked += 1
        elif argv[:1] == ["exportctl"]:
            check_exportctl(argv)
            checked += 1
    assert checked >= 10, "the deployment files should run celery and exportctl commands"


def test_exportctl_check_refuses_unknown_commands() -> None:
    with pytest.raises(AssertionError):
        check_exportctl(["exportctl", "reexprot", "s3://models/exports"])
    with pytest.raises(AssertionError):
        parse_celery(["celery", "-A", "worker", "worker", "--soft-shutdown-timeout=60"], "")


def test_workers_consume_known_queues_and_no_limits_on_the_command_line() -> None:
    assert workers(), "no celery worker in the deployment files"
    for label, runners in (("docker-compose.yml", compose_runners()), ("deploy/k8s", k8s_runners())):
        consumed: set[str] = set()
        for runner in workers(runners):
            call = runner.celery()
            assert call is not None
            queues = worker_queues(call)
            assert queues, f"{runner.where}: give the queues with -Q ({sorted(QUEUES)})"
            assert queues <= QUEUES, f"{runner.where}: unknown queues {sorted(queues - QUEUES)}"
            given = {k for k, v in call.params.items() if k in FORBIDDEN_WORKER_OPTIONS and v}
            assert not given, f"{runner.where}: {given} on the command line bypasses the EXPORT_ settings"
            consumed |= queues
        assert consumed == QUEUES, f"{label}: nobody consumes {sorted(QUEUES - consumed)}"
    for kind, queue in (("cpu", CPU_QUEUE), ("cuda", GPU_QUEUE)):
        call = parse_celery(
            program(DOCKER[kind].final.exec_form("ENTRYPOINT") + DOCKER[kind].final.exec_form("CMD")), ""
        )
        assert call.sub == "worker" and worker_queues(call) == {queue}, f"Dockerfile.{kind}'s CMD must consume {queue}"


def test_gpu_workers_reserve_one_gpu_per_process() -> None:
    for runner in workers():
        call = runner.celery()
        assert call is not None
        if GPU_QUEUE in worker_queues(call):
            assert worker_queues(call) == {GPU_QUEUE}, f"{runner.where}: a GPU worker consumes only {GPU_QUEUE!r}"
            assert runner.gpus, f"{runner.where}: consumes {GPU_QUEUE!r} without reserving GPUs"
            assert isinstance(runner.gpus, int), f"{runner.where}: GPUs: {runner.gpus} (one process per GPU)"
            assert call.params.get("concurrency") == runner.gpus, (
                f"{runner.where}: --concurrency {call.params.get('concurrency')} for {runner.gpus} GPUs"
            )
            assert runner.image.endswith("-cuda"), f"{runner.where}: a GPU worker runs the CUDA image"
        else:
            assert not runner.gpus, f"{runner.where}: reserves GPUs but does not consume {GPU_QUEUE!r}"


def test_soft_shutdown_is_configured() -> None:
    for runner in workers():
        call = runner.celery()
        assert call is not None
        conf = Celery(set_as_current=False).loader.cmdline_config_parser(call.extra, namespace="worker")
        assert conf.get("worker_soft_shutdown_timeout", 0) > 0, f"{runner.where}: set worker.soft_shutdown_timeout"


def test_stopping_a_worker_lets_its_job_end_or_go_back() -> None:
    """A worker told to stop (SIGTERM) either finishes its running job or returns it to the
    queue before it is killed: a redeploy loses no job and delays none by the visibility timeout."""
    for runner in workers():
        call = runner.celery()
        assert call is not None and runner.grace is not None
        settings = settings_from(runner.env)
        conf = Celery(set_as_current=False).loader.cmdline_config_parser(call.extra, namespace="worker")
        soft_shutdown = float(conf.get("worker_soft_shutdown_timeout", 0))
        assert runner.grace > settings.soft_time_limit, (
            f"{runner.where}: grace {runner.grace:g}s is not above the soft time limit {settings.soft_time_limit}"
        )
        assert soft_shutdown < runner.grace, f"{runner.where}: soft shutdown {soft_shutdown:g}s outlasts the grace"
        if runner.env.get("REMAP_SIGTERM") == "SIGQUIT":
            # Cold shutdown on SIGTERM: jobs get the soft shutdown timeout, then go back to Redis.
            assert soft_shutdown > 0, f"{runner.where}: REMAP_SIGTERM without a soft shutdown timeout"
        else:
            # Warm shutdown on SIGTERM: the running job ends by itself, at the latest at the hard limit.
            assert runner.grace > settings.time_limit, (
                f"{runner.where}: grace {runner.grace:g}s is not above the time limit {settings.time_limit}"
            )


def test_exactly_one_beat() -> None:
    beats = [r for r in compose_runners() if (c := r.celery()) is not None and c.sub == "beat"]
    assert len(beats) == 1, f"docker-compose.yml: {len(beats)} beat services"
    (service_name,) = [n for n in SERVICES if f"docker-compose.yml:{n}" == beats[0].where]
    service = SERVICES[service_name]
    assert service.get("container_name"), "the beat service needs a container_name, so that it cannot be scaled"
    assert service.get("deploy", {}).get("replicas", 1) == 1
    beat_workloads = [
        w
        for w, c in k8s_containers()
        if k8s_command(c)[:1] == ["celery"] and parse_celery(k8s_command(c), c["image"]).sub == "beat"
    ]
    assert len(beat_workloads) == 1, f"deploy/k8s: {len(beat_workloads)} beat workloads"
    beat = beat_workloads[0]
    assert beat["kind"] == "Deployment" and beat["spec"].get("replicas") == 1, "beat: replicas 1"
    assert beat["spec"].get("strategy", {}).get("type") == "Recreate", "beat: strategy Recreate (never two at once)"
    targets = {s["spec"]["scaleTargetRef"]["name"] for s in k8s_objects("ScaledObject")}
    assert beat["metadata"]["name"] not in targets, "beat must not be autoscaled"
    for runner in workers():
        call = runner.celery()
        assert call is not None and not call.params.get("beat"), f"{runner.where}: embedded beat (-B)"


# --- Health checks and probes ----------------------------------------------------------------


def ping_checks(runner: Runner) -> list[CeleryCall]:
    calls = [parse_celery(argv, runner.image) for argv in runner.checks if argv[:1] == ["celery"]]
    return [c for c in calls if c.sub == "inspect" and c.params.get("command") == "ping"]


def test_every_compose_service_has_a_health_check() -> None:
    for name, service in SERVICES.items():
        if "tools" in service.get("profiles", []):
            continue
        assert service.get("healthcheck", {}).get("test"), f"docker-compose.yml:{name} has no health check"
    redis = shlex.join(compose_command(SERVICES["redis"]))
    assert "--appendonly yes" in redis and "--maxmemory-policy noeviction" in redis, redis


def test_workers_are_checked_by_pinging_themselves() -> None:
    for runner in workers():
        call = runner.celery()
        assert call is not None
        pings = ping_checks(runner)
        assert pings, f"{runner.where}: no `celery inspect ping` health check or probe"
        names = [a.split("=", 1)[-1] for i, a in enumerate(runner.argv) if a.startswith("--hostname")]
        names += [runner.argv[i + 1] for i, a in enumerate(runner.argv) if a in ("-n", "--hostname")]
        assert set(names) <= {"celery@%h"}, f"{runner.where}: the pings ask for celery@$HOSTNAME"
        for ping in pings:
            assert ping.params.get("destination") == ["celery@$HOSTNAME"], f"{runner.where}: ping only this worker"
            assert ping.app is not None or runner.env.get("CELERY_BROKER_URL"), (
                f"{runner.where}: a ping without -A needs CELERY_BROKER_URL"
            )
            assert runner.check_timeout is not None and ping.params["timeout"] < runner.check_timeout, (
                f"{runner.where}: the check times out before the ping's own timeout"
            )
    k8s_workers = [r for r in workers() if r.where.startswith("deploy/k8s")]
    for workload, container in k8s_containers():
        if any(r.where == f"deploy/k8s {workload['metadata']['name']}/{container['name']}" for r in k8s_workers):
            for probe in ("livenessProbe", "readinessProbe"):
                assert probe in container, f"{workload['metadata']['name']}: no {probe}"


# --- Kubernetes ------------------------------------------------------------------------------


def cpu_quantity(value: str | int | float) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_k8s_pods_are_non_root_and_bounded() -> None:
    for workload, container in k8s_containers():
        where = f"{workload['metadata']['name']}/{container['name']}"
        pod = pod_spec(workload).get("securityContext", {})
        own = container.get("securityContext", {})
        assert (own.get("runAsNonRoot", pod.get("runAsNonRoot"))) is True, f"{where}: runAsNonRoot"
        user = own.get("runAsUser", pod.get("runAsUser"))
        assert user is None or user != 0, f"{where}: runs as root"
        assert own.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{where}: {kind} for cpu and memory"
        env = k8s_env(container)
        argv = k8s_command(container)
        call = parse_celery(argv, container["image"]) if argv[:1] == ["celery"] else None
        if call is not None and call.sub == "worker" and "EXPORT_TORCH_THREADS" in env:
            threads = int(env["EXPORT_TORCH_THREADS"]) * int(call.params["concurrency"])
            assert threads <= cpu_quantity(resources["limits"]["cpu"]), f"{where}: {threads} torch threads"
        if env.get("EXPORT_SPOOL_DIR"):
            mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
            assert env["EXPORT_SPOOL_DIR"] in mounts, f"{where}: EXPORT_SPOOL_DIR is not a mounted volume"


def test_keda_scales_each_worker_on_its_own_queue() -> None:
    scaled = k8s_objects("ScaledObject")
    deployments = {d["metadata"]["name"]: d for d in k8s_objects("Deployment")}
    secret_keys = set(k8s_named("Secret", "export-worker-secrets")["stringData"])
    seen: set[str] = set()
    for obj in scaled:
        target = deployments.get(obj["spec"]["scaleTargetRef"]["name"])
        assert target is not None, f"ScaledObject {obj['metadata']['name']}: no such Deployment"
        (container,) = pod_spec(target)["containers"]
        call = parse_celery(k8s_command(container), container["image"])
        assert call.sub == "worker", f"ScaledObject {obj['metadata']['name']} scales a non-worker"
        queues = worker_queues(call)
        broker = urlsplit(settings_from(k8s_env(container)).broker_url)
        triggers = obj["spec"]["triggers"]
        assert {t["type"] for t in triggers} == {"redis"}
        assert {t["metadata"]["listName"] for t in triggers} == queues, f"{obj['metadata']['name']}: listName"
        for trigger in triggers:
            meta = trigger["metadata"]
            assert meta["address"] == f"{broker.hostname}:{broker.port or 6379}", "KEDA watches another Redis"
            assert int(meta.get("databaseIndex", 0)) == int((broker.path or "/0").strip("/") or 0), "databaseIndex"
            assert (meta.get("enableTLS", "false") == "true") == (broker.scheme == "rediss"), "enableTLS vs scheme"
            assert int(meta["listLength"]) >= 1
            if broker.password:
                auth = k8s_named("TriggerAuthentication", trigger["authenticationRef"]["name"])
                for ref in auth["spec"]["secretTargetRef"]:
                    assert ref["key"] in secret_keys, f"TriggerAuthentication reads a missing key {ref['key']}"
        seen |= queues
    assert seen == QUEUES, f"KEDA scales no worker for {sorted(QUEUES - seen)}"


def test_kustomization_applies_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    manifests = {p.name for p in K8S_FILES} - {"kustomization.yaml", "secret.example.yaml"}
    resources = set(kustomization["resources"])
    assert resources == manifests, f"kustomization.yaml: missing {manifests - resources}, extra {resources - manifests}"
    for _, doc in K8S_DOCS:
        if doc.get("kind") not in (None, "Kustomization"):
            assert doc.get("metadata", {}).get("name"), doc


# --- Images ----------------------------------------------------------------------------------


def test_images_are_pinned() -> None:
    images = [(f"docker-compose.yml:{n}", s["image"]) for n, s in SERVICES.items() if "image" in s]
    images += [(f"deploy/k8s {w['metadata']['name']}", c["image"]) for w, c in k8s_containers()]
    images += [
        (f"Dockerfile.{k}", s.base)
        for k, d in DOCKER.items()
        for s in d.stages
        if s.base not in {x.name for x in d.stages}
    ]
    for where, image in images:
        repository, tag = image_parts(image)
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{where}: {image} is not pinned to a version"
        if repository != OUR_IMAGE:
            assert re.search(r"\d+\.\d+", tag), f"{where}: {image}: pin an exact version"
    for name, service in SERVICES.items():
        if "build" in service:
            build = service["build"]
            assert (ROOT / build["context"]).resolve() == ROOT, f"{name}: the build context is the repository root"
            dockerfile = (ROOT / build["context"] / build["dockerfile"]).resolve()
            assert our_dockerfile(service["image"]) is DOCKER[dockerfile.name.split(".")[-1]], name


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_is_small_non_root_and_pins_torch(kind: str) -> None:
    dockerfile = DOCKER[kind]
    assert len(dockerfile.stages) >= 2, f"Dockerfile.{kind}: build and runtime stages"
    final = dockerfile.final
    user = final.all("USER")
    assert user, f"Dockerfile.{kind}: no USER in the final stage"
    uid = user[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"Dockerfile.{kind}: USER {user[-1]} (numeric, not root)"
    runs = " ".join(final.all("RUN"))
    for tool in ("gcc", "g++", "build-essential", "-dev ", "git ", "pip install", "curl", "wget"):
        assert tool not in runs + " ", f"Dockerfile.{kind}: {tool.strip()} in the final stage"
    for stage in dockerfile.stages:
        no_cache_env = any("PIP_NO_CACHE_DIR=1" in e for e in stage.all("ENV"))
        for run in stage.all("RUN"):
            if "pip install" in run:
                assert no_cache_env or "--no-cache-dir" in run, f"Dockerfile.{kind}: pip cache kept: {run}"
            if "apt-get install" in run:
                assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists" in run, run
    torch = Version(version("torch")).base_version
    assert dockerfile.arg("TORCH_VERSION") == torch, f"Dockerfile.{kind}: torch {dockerfile.arg('TORCH_VERSION')}"
    assert re.search(r'"?torch==\$\{?TORCH_VERSION\}?"?', dockerfile.text), f"Dockerfile.{kind}: install torch pinned"
    index = dockerfile.arg("TORCH_INDEX_URL")
    assert index.startswith("https://download.pytorch.org/whl/"), index
    if kind == "cpu":
        assert index.endswith("/cpu"), f"Dockerfile.cpu: CPU wheels, not {index}"
    else:
        cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(?:cudnn-)?runtime-", final.base)
        assert cuda, f"Dockerfile.cuda: base {final.base} is not an exact nvidia/cuda runtime tag"
        assert index.endswith(f"/cu{cuda.group(1)}{cuda.group(2)}"), f"{index} does not match CUDA of {final.base}"
    argv = program(final.exec_form("ENTRYPOINT") + final.exec_form("CMD"))
    assert argv[:1] == ["celery"], f"Dockerfile.{kind} runs {argv}"


def test_build_context_sends_what_the_dockerfiles_copy() -> None:
    lines = [x.strip() for x in DOCKERIGNORE.read_text(encoding="utf-8").splitlines() if x.strip()]
    lines = [x for x in lines if not x.startswith("#")]
    assert lines[0] == "*", ".dockerignore: exclude everything, then allow what the images need"
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    assert not any(a.startswith(".env") for a in allowed), ".dockerignore lets .env into the build context"
    for kind, dockerfile in DOCKER.items():
        for stage in dockerfile.stages:
            for copy in stage.all("COPY"):
                words = [w for w in copy.split() if not w.startswith("--")]
                if "--from=" in copy:
                    continue
                for source in (w.rstrip("/") for w in words[:-1]):
                    assert source in allowed, f"Dockerfile.{kind} copies {source}, which .dockerignore leaves out"
                    assert (ROOT / source).exists(), f"Dockerfile.{kind} copies {source}, which does not exist"
