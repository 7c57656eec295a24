"""Peak resident memory of a process, sampled from outside (C++ code holding the measured
process's GIL cannot hide a peak from another process)."""

from __future__ import annotations

import contextlib
import signal
import threading

import psutil


class RssSampler(threading.Thread):
    """Samples the RSS of a process (with ``descendants``, summed over it and its
    descendants) every ``interval`` seconds until stopped; keeps the peak."""

    def __init__(self, pid: int, *, interval: float, descendants: bool = False, rescan_every: int = 5) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self._root = psutil.Process(pid)
        self._root_cmdline = self._root.cmdline()
        self._procs: list[psutil.Process] = [self._root]
        self._interval = interval
        self._descendants = descendants
        self._rescan_every = rescan_every
        self._stop_event = threading.Event()
        self.peak = 0
        self.samples = 0

    def sample(self) -> int:
        if self._descendants and self.samples % self._rescan_every == 0:
            with contextlib.suppress(psutil.Error):
                self._procs = [self._root, *self._root.children(recursive=True)]
        self.samples += 1
        total = 0
        for proc in self._procs:
            with contextlib.suppress(psutil.Error):
                # A child forked but not yet exec'd shares the parent's pages (vfork: its whole
                # memory); its RSS would count them twice.
                if proc is not self._root and proc.cmdline() == self._root_cmdline:
                    continue
                total += proc.memory_info().rss
        self.peak = max(self.peak, total)
        return total

    def run(self) -> None:
        # Ctrl-C and SIGTERM must reach the main thread, to interrupt its wait for the child.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        while not self._stop_event.wait(self._interval):
            self.sample()

    def stop(self) -> int:
        """Stop sampling (one last sample first) and return the peak."""
        self.sample()
        self._stop_event.set()
        self.join()
        return self.peak
