"""Repository-only tooling for the tests and benchmarks (not installed): SeaweedFS's
``weed mini`` command line, process trees, the benchmarks' child-process protocol and RSS
sampler.  The launchers ``exportctl demo`` needs (moto, Redis, a worker) live in
:mod:`worker.cli.demo_services`."""

__all__: list[str] = []
