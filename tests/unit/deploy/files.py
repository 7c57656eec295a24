"""The deployment files, parsed for the tests under tests/unit/deploy (nothing is built or started).

docker-compose.yml, .env.example, deploy/Dockerfile.*, deploy/k8s/*.yaml and deploy/README.md
are read when a test first asks for them (:func:`services`, :func:`dockerfiles`,
:func:`k8s_docs`, :func:`all_runners`), and cached: a file that does not parse fails the tests
that read it, not the collection of the others.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import click
import yaml
from celery import Celery
from celery.bin.base import CLIContext
from celery.bin.celery import celery as celery_cli
from pydantic import AliasChoices

from worker import cli
from worker.celery import CPU_QUEUE, GPU_QUEUE
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
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


INTERPOLATION = re.compile(
    r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*)|(:?\?)([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)"
)


def required_value(name: str) -> str:
    """What :func:`interpolate` puts for ``${NAME:?message}``: a variable Compose refuses to run without."""
    return f"<required {name}>"


def interpolate(value: Any, seen: set[str]) -> Any:
    """Compose's interpolation with an empty environment: ``${X:-default}`` is its default,
    ``$$`` a literal ``$``, ``${X:?message}`` a required variable (:func:`required_value`).
    A variable without a default that is not required is an error (it would be empty)."""
    if isinstance(value, dict):
        return {k: interpolate(v, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, seen) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(5)
        seen.add(name)
        if match.group(3) is not None:
            assert match.group(4), f"docker-compose.yml requires ${{{name}}}: say how to set it"
            return required_value(name)
        if match.group(2) is None:
            raise AssertionError(f"docker-compose.yml uses ${{{name}}} without a default")
        return match.group(2)

    return INTERPOLATION.sub(replace, value)


@cache
def _compose() -> tuple[dict[str, Any], frozenset[str]]:
    variables: set[str] = set()
    parsed: dict[str, Any] = interpolate(yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8")), variables)
    return parsed, frozenset(variables)


def compose_variables() -> frozenset[str]:
    """The variables docker-compose.yml interpolates."""
    return _compose()[1]


def services() -> dict[str, dict[str, Any]]:
    """docker-compose.yml's services, interpolated (parsed once, when first asked)."""
    services: dict[str, dict[str, Any]] = _compose()[0]["services"]
    return services


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


@cache
def dockerfiles() -> dict[str, Dockerfile]:
    """deploy/Dockerfile.* by kind (parsed once, when first asked)."""
    return {kind: read_dockerfile(path) for kind, path in DOCKERFILES.items()}


# --- Kubernetes ------------------------------------------------------------------------------


def k8s_files() -> list[Path]:
    """The manifests under deploy/k8s."""
    return sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*.yml"))


@cache
def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    """Every object of every manifest under deploy/k8s, with its file (parsed once, when first asked)."""
    return [
        (path, doc)
        for path in k8s_files()
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict)
    ]


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_docs() if doc.get("kind") == kind]


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
        for _, doc in k8s_docs()
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
    kinds = [kind for kind in dockerfiles() if tag and tag.endswith(f"-{kind}")]
    assert len(kinds) == 1, f"image {image}: its tag must end in one of {sorted(dockerfiles())}"
    return dockerfiles()[kinds[0]]


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
    for name, service in services().items():
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


@cache
def all_runners() -> list[Runner]:
    """Every place in docker-compose.yml and deploy/k8s that runs a command."""
    return compose_runners() + k8s_runners()


def our_runners() -> list[Runner]:
    """The runners of our images."""
    return [r for r in all_runners() if r.ours]


def is_worker(runner: Runner) -> bool:
    return runner.argv[:1] == ["celery"] and split_celery(runner.argv)[1] == "worker"


def workers(runners: list[Runner] | None = None) -> list[Runner]:
    """The runners that run ``celery worker`` (parsed when asked: a bad command line fails a test)."""
    return [r for r in all_runners() if is_worker(r)] if runners is None else [r for r in runners if is_worker(r)]


def worker_queues(call: CeleryCall) -> set[str]:
    queues = call.params.get("queues") or []
    return {q.strip() for item in queues for q in item.split(",") if q.strip()}


# --- Secrets, settings used by every service, commands, probes, Kubernetes quantities --------


PLACEHOLDER = re.compile(r"change.?me|replace.?me", re.IGNORECASE)


def every_env_name() -> dict[str, list[str]]:
    """Every environment variable the deployment files set, and where."""
    found: dict[str, list[str]] = {}
    env = read_env_file(ENV_EXAMPLE)
    for name in [*env.active, *env.commented]:
        found.setdefault(name, []).append(".env.example")
    for service_name, service in services().items():
        extra = service.get("environment", {})
        keys = [item.split("=", 1)[0] for item in extra] if isinstance(extra, list) else list(extra)
        for name in keys:
            found.setdefault(name, []).append(f"docker-compose.yml:{service_name}")
    for name in compose_variables():
        found.setdefault(name, []).append("docker-compose.yml interpolation")
    for _, doc in k8s_docs():
        if doc.get("kind") in ("ConfigMap", "Secret"):
            for name in [*doc.get("data", {}), *doc.get("stringData", {})]:
                found.setdefault(name, []).append(f"deploy/k8s {doc['kind']}")
    for _, container in k8s_containers():
        for item in container.get("env", []):
            found.setdefault(item["name"], []).append(f"deploy/k8s container {container['name']}")
    for kind, dockerfile in dockerfiles().items():
        for stage in dockerfile.stages:
            for rest in stage.all("ENV"):
                for name in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", rest):
                    found.setdefault(name, []).append(f"Dockerfile.{kind}")
    return found


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


def ping_checks(runner: Runner) -> list[CeleryCall]:
    calls = [parse_celery(argv, runner.image) for argv in runner.checks if argv[:1] == ["celery"]]
    return [c for c in calls if c.sub == "inspect" and c.params.get("command") == "ping"]


def cpu_quantity(value: str | int | float) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
