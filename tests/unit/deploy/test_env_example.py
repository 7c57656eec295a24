""".env.example: every setting listed with its default, values written plainly, every
variable explained, and no real secret in it or in the Kubernetes Secret template."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from serializer.s3.parts import parse_size
from tests.unit.deploy.files import (
    ALIASED,
    ENV_EXAMPLE,
    FIELD_OF_ENV,
    PLACEHOLDER,
    default_settings,
    env_names,
    k8s_named,
    read_env_file,
    settings_from,
)
from worker.settings import Settings


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
