"""The Celery side of export-worker: settings, spec, builders, the export job, tasks and CLI.

``celery -A worker worker`` finds the app in :mod:`worker.celery`.
"""

__all__: list[str] = []
