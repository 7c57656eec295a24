"""The Redis keys of bulk runs: one run's, its selection's, and the locks of targets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

#: Every key of a bulk run starts with this.
PREFIX = "export-worker:bulk:"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class RunKeys:
    """The Redis keys of one run, and of its selection."""

    run_id: str
    source: str
    policy: str
    to_format: str = ""

    @property
    def run(self) -> str:
        return f"{PREFIX}run:{self.run_id}"

    @property
    def todo(self) -> str:
        return f"{self.run}:todo"

    @property
    def failures(self) -> str:
        return f"{self.run}:failures"

    @property
    def counted(self) -> str:
        return f"{self.run}:counted"

    @property
    def targets(self) -> str:
        return f"{self.run}:targets"

    @property
    def report(self) -> str:
        return f"{self.run}:report"

    @property
    def lock(self) -> str:
        """One bulk run per selection, whatever its policy."""
        return f"{PREFIX}lock:{_digest(self.source)}"

    @property
    def done(self) -> str:
        """Targets finished by unfinished runs of this selection and policy (for resuming)."""
        return f"{PREFIX}done:{self._selection}"

    @property
    def last(self) -> str:
        return f"{PREFIX}last:{self._selection}"

    @property
    def _selection(self) -> str:
        """The selection, policy and target format: what a resumed run must share."""
        return _digest(self.source, self.policy, *([self.to_format] if self.to_format else []))

    def all_run_keys(self) -> tuple[str, ...]:
        return (self.run, self.todo, self.failures, self.counted, self.targets, self.report)


def run_key(run_id: str) -> str:
    """The hash holding the record of run ``run_id``."""
    return f"{PREFIX}run:{run_id}"


def target_key(target: str) -> str:
    """The lock of the export at ``target``."""
    return f"{PREFIX}target:{_digest(target)}"
