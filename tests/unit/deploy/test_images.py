"""The images: pinned everywhere, Dockerfiles small, non-root and pinning torch, and a build
context that sends what the Dockerfiles copy."""

from __future__ import annotations

import re
from importlib.metadata import version
from typing import Any

import pytest
from packaging.version import Version

from tests.unit.deploy.files import (
    DOCKERFILES,
    DOCKERIGNORE,
    OUR_IMAGE,
    ROOT,
    Dockerfile,
    image_parts,
    k8s_containers,
    our_dockerfile,
    program,
)


def test_images_are_pinned(services: dict[str, dict[str, Any]], dockerfiles: dict[str, Dockerfile]) -> None:
    images = [(f"docker-compose.yml:{n}", s["image"]) for n, s in services.items() if "image" in s]
    images += [(f"deploy/k8s {w['metadata']['name']}", c["image"]) for w, c in k8s_containers()]
    images += [
        (f"Dockerfile.{k}", s.base)
        for k, d in dockerfiles.items()
        for s in d.stages
        if s.base not in {x.name for x in d.stages}
    ]
    for where, image in images:
        repository, tag = image_parts(image)
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{where}: {image} is not pinned to a version"
        if repository != OUR_IMAGE:
            assert re.search(r"\d+\.\d+", tag), f"{where}: {image}: pin an exact version"
    for name, service in services.items():
        if "build" in service:
            build = service["build"]
            assert (ROOT / build["context"]).resolve() == ROOT, f"{name}: the build context is the repository root"
            dockerfile = (ROOT / build["context"] / build["dockerfile"]).resolve()
            assert our_dockerfile(service["image"]) is dockerfiles[dockerfile.name.split(".")[-1]], name


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_is_small_non_root_and_pins_torch(kind: str, dockerfiles: dict[str, Dockerfile]) -> None:
    dockerfile = dockerfiles[kind]
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


def test_build_context_sends_what_the_dockerfiles_copy(dockerfiles: dict[str, Dockerfile]) -> None:
    lines = [x.strip() for x in DOCKERIGNORE.read_text(encoding="utf-8").splitlines() if x.strip()]
    lines = [x for x in lines if not x.startswith("#")]
    assert lines[0] == "*", ".dockerignore: exclude everything, then allow what the images need"
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    assert not any(a.startswith(".env") for a in allowed), ".dockerignore lets .env into the build context"
    for kind, dockerfile in dockerfiles.items():
        for stage in dockerfile.stages:
            for copy in stage.all("COPY"):
                words = [w for w in copy.split() if not w.startswith("--")]
                if "--from=" in copy:
                    continue
                for source in (w.rstrip("/") for w in words[:-1]):
                    assert source in allowed, f"Dockerfile.{kind} copies {source}, which .dockerignore leaves out"
                    assert (ROOT / source).exists(), f"Dockerfile.{kind} copies {source}, which does not exist"
