"""The commands the deployment files run, parsed by Celery's and exportctl's own parsers:
they exist, workers consume known queues, GPU workers, shutdown, one beat, health checks and
probes."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
from celery import Celery

from tests.unit.deploy.files import (
    FORBIDDEN_WORKER_OPTIONS,
    QUEUES,
    Dockerfile,
    Runner,
    check_exportctl,
    compose_command,
    compose_runners,
    k8s_command,
    k8s_containers,
    k8s_objects,
    k8s_runners,
    parse_celery,
    ping_checks,
    program,
    readme_commands,
    settings_from,
    worker_queues,
    workers,
)
from worker.celery import CPU_QUEUE, GPU_QUEUE


def test_every_command_exists(dockerfiles: dict[str, Dockerfile], all_runners: list[Runner]) -> None:
    checked = 0
    commands = [(r.where, r.image, argv) for r in all_runners for argv in [r.argv, *r.checks]]
    commands += [
        (f"Dockerfile.{k}", "", program(d.final.exec_form("ENTRYPOINT") + d.final.exec_form("CMD")))
        for k, d in dockerfiles.items()
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


def test_workers_consume_known_queues_and_no_limits_on_the_command_line(dockerfiles: dict[str, Dockerfile]) -> None:
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
            program(dockerfiles[kind].final.exec_form("ENTRYPOINT") + dockerfiles[kind].final.exec_form("CMD")), ""
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


def test_exactly_one_beat(services: dict[str, dict[str, Any]]) -> None:
    beats = [r for r in compose_runners() if (c := r.celery()) is not None and c.sub == "beat"]
    assert len(beats) == 1, f"docker-compose.yml: {len(beats)} beat services"
    (service_name,) = [n for n in services if f"docker-compose.yml:{n}" == beats[0].where]
    service = services[service_name]
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


def test_every_compose_service_has_a_health_check(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "tools" in service.get("profiles", []):
            continue
        assert service.get("healthcheck", {}).get("test"), f"docker-compose.yml:{name} has no health check"
    redis = shlex.join(compose_command(services["redis"]))
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
