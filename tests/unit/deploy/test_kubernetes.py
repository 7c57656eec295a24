"""deploy/k8s: pods non-root and bounded, KEDA scaling each worker on its own queue, the
kustomization applying every manifest but the Secret template."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tests.unit.deploy.files import (
    K8S,
    QUEUES,
    cpu_quantity,
    k8s_command,
    k8s_containers,
    k8s_env,
    k8s_named,
    k8s_objects,
    parse_celery,
    pod_spec,
    settings_from,
    worker_queues,
)


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


def test_kustomization_applies_every_manifest_but_the_secret_template(
    k8s_docs: list[tuple[Path, dict[str, Any]]], k8s_files: list[Path]
) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    manifests = {p.name for p in k8s_files} - {"kustomization.yaml", "secret.example.yaml"}
    resources = set(kustomization["resources"])
    assert resources == manifests, f"kustomization.yaml: missing {manifests - resources}, extra {resources - manifests}"
    for _, doc in k8s_docs:
        if doc.get("kind") not in (None, "Kustomization"):
            assert doc.get("metadata", {}).get("name"), doc
