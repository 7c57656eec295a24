"""The export benchmark's results: measurements, one row per (endpoint, size, variant), the
targets, and the tables (text and markdown)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ._common import MiB
from ._export_common import (
    MAX_TENSOR_BYTES,
    PT2_VARIANTS,
    STRATEGIES,
    TARGET_PT2_VS_BUFFER,
    TARGET_RSS_MIB,
    TARGET_VS_BUFFER,
    TARGET_VS_FILE,
    format_size,
)
from ._export_endpoints import Endpoint


# -- measurements ----------------------------------------------------------------------------
@dataclass
class Measurement:
    endpoint: str
    size: int
    variant: str
    repeat: int
    wall: float | None = None
    peak_growth: int | None = None
    archive_size: int | None = None
    skipped: str | None = None
    error: str | None = None
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.problems


# -- reporting ---------------------------------------------------------------------------------
def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MiB:.1f}"


def signed_mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MiB:+.1f}"


def rate(m: Measurement) -> str:
    if not m.wall or m.archive_size is None:
        return "-"
    return f"{m.archive_size / m.wall / 1e6:.1f}"


@dataclass
class Row:
    """The repeats of one (endpoint, size, variant): median wall, largest peak."""

    endpoint: str
    size: int
    variant: str
    runs: list[Measurement]

    @property
    def good(self) -> list[Measurement]:
        return [m for m in self.runs if m.ok and m.wall is not None]

    @property
    def wall(self) -> float | None:
        walls = [m.wall for m in self.good if m.wall is not None]
        return statistics.median(walls) if walls else None

    @property
    def peak(self) -> int | None:
        peaks = [m.peak_growth for m in self.good if m.peak_growth is not None]
        return max(peaks) if peaks else None

    @property
    def archive_size(self) -> int | None:
        sizes = [m.archive_size for m in self.good if m.archive_size is not None]
        return sizes[0] if sizes else None

    def cells(self) -> list[str]:
        wall, size = self.wall, self.archive_size
        skipped = next((m.skipped for m in self.runs if m.skipped), None)
        failed = [m.error or "; ".join(m.problems) for m in self.runs if not m.ok]
        if skipped:
            note = skipped
        elif failed:
            note = f"FAILED ({len(failed)}/{len(self.runs)}): {failed[0]}"
        else:
            note = ", ".join(dict.fromkeys(c for m in self.runs for c in m.checks))
        if len(self.good) > 1:
            walls = [m.wall for m in self.good if m.wall is not None]
            note = f"{note}; {len(walls)} runs, wall {min(walls):.2f}-{max(walls):.2f} s"
        return [
            self.endpoint,
            format_size(self.size),
            self.variant,
            "-" if wall is None else f"{wall:.2f}",
            mib(self.peak),
            "-" if wall is None or size is None else f"{size / wall / 1e6:.1f}",
            note,
        ]


HEADERS = ["endpoint", "size", "variant", "wall s", "peak RSS above model MiB", "MB/s", "check"]
RIGHT = {3, 4, 5}


def render_table(rows: list[list[str]], *, markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(HEADERS) + " |"]
        lines.append("|" + "|".join("---:" if i in RIGHT else "---" for i in range(len(HEADERS))) + "|")
        lines.extend("| " + " | ".join(cells) + " |" for cells in rows)
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]

    def line(cells: list[str]) -> str:
        padded = (c.rjust(w) if i in RIGHT else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(HEADERS), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def largest_tensor(size: int, max_tensor: int) -> int:
    """Bytes of the generated model's largest parameter (see :func:`build_model`)."""
    return min(size // 4, max(1, max_tensor // 4)) * 4


def evaluate_targets(rows: list[Row], max_tensor: int = MAX_TENSOR_BYTES) -> list[tuple[str, str]]:
    """(PASS/FAIL/n/a, description) for each target of each streaming strategy.

    TorchScript (``spool``, ``fifo``): peak RSS growth <= 256 MiB, wall <= 1.1x ``file``,
    >= 3x faster than ``buffer``.  ``.pt2`` (``pt2-stream``, ``pt2-spool``): peak RSS growth
    <= twice the largest tensor (what torch's save holds whatever its target) + 256 MiB (the
    TorchScript target, on top of that floor), wall <= 1.1x ``pt2-file``, faster than
    ``pt2-buffer``.  What the upload adds above ``pt2-file``'s peak is printed too.
    """
    by_key = {(r.endpoint, r.size, r.variant): r for r in rows}
    results: list[tuple[str, str]] = []
    for row in rows:
        if row.variant not in STRATEGIES:
            continue
        _, file_variant, buffer_variant = STRATEGIES[row.variant]
        pt2 = row.variant in PT2_VARIANTS
        where = f"{row.endpoint} {format_size(row.size)} {row.variant}"
        wall, peak = row.wall, row.peak
        if wall is None or peak is None:
            results.append(("FAIL", f"{where}: no successful run"))
            continue
        if pt2:
            tensor = largest_tensor(row.size, max_tensor)
            limit = 2 * tensor + TARGET_RSS_MIB * MiB
            bound = f"2 x largest tensor {mib(tensor)} MiB + {TARGET_RSS_MIB} MiB = {mib(limit)} MiB"
            saved = by_key.get((row.endpoint, row.size, file_variant))
            if saved is not None and saved.peak is not None:
                bound += f"; {signed_mib(peak - saved.peak)} MiB above {file_variant}'s peak"
        else:
            limit = TARGET_RSS_MIB * MiB
            bound = f"{TARGET_RSS_MIB} MiB"
        verdict = "PASS" if peak <= limit else "FAIL"
        results.append((verdict, f"{where}: peak RSS growth {mib(peak)} MiB <= {bound}"))
        file_row = by_key.get((row.endpoint, row.size, file_variant))
        if file_row is not None and file_row.wall is not None:
            ratio = wall / file_row.wall
            verdict = "PASS" if ratio <= TARGET_VS_FILE else "FAIL"
            results.append(
                (
                    verdict,
                    f"{where}: wall {wall:.2f} s = {ratio:.2f}x {file_variant}'s {file_row.wall:.2f} s "
                    f"(<= {TARGET_VS_FILE}x)",
                )
            )
        else:
            results.append(("n/a", f"{where}: wall vs {file_variant} ({file_variant} not run or failed)"))
        buffer_row = by_key.get((row.endpoint, row.size, buffer_variant))
        if buffer_row is not None and buffer_row.wall is not None:
            speedup = buffer_row.wall / wall
            if pt2:
                verdict = "PASS" if speedup > TARGET_PT2_VS_BUFFER else "FAIL"
                want = "> 1x: faster"
            else:
                verdict = "PASS" if speedup >= TARGET_VS_BUFFER else "FAIL"
                want = f">= {TARGET_VS_BUFFER}x"
            results.append(
                (
                    verdict,
                    f"{where}: {speedup:.2f}x faster than {buffer_variant}'s {buffer_row.wall:.2f} s ({want})",
                )
            )
        else:
            skipped = buffer_row is not None and any(m.skipped for m in buffer_row.runs)
            why = "skipped (memory)" if skipped else "not run or failed"
            results.append(("n/a", f"{where}: speedup vs {buffer_variant} ({buffer_variant} {why})"))
    return results


def group_rows(measurements: list[Measurement]) -> list[Row]:
    rows: dict[tuple[str, int, str], Row] = {}
    for m in measurements:
        key = (m.endpoint, m.size, m.variant)
        rows.setdefault(key, Row(m.endpoint, m.size, m.variant, [])).runs.append(m)
    return list(rows.values())


def report(
    measurements: list[Measurement],
    endpoints: list[Endpoint],
    header: list[str],
    markdown_path: str | None,
    *,
    failures: list[str],
    interrupted: bool,
    max_tensor: int = MAX_TENSOR_BYTES,
) -> None:
    rows = group_rows(measurements)
    targets = evaluate_targets(rows, max_tensor)
    md: list[str] = ["# Export to S3 benchmark", "", *(f"- {h}" for h in header), ""]
    if interrupted:
        md += ["**Interrupted: partial results.**", ""]
    print()
    for failure in failures:
        print(f"FAILED endpoint: {failure}")
        md += [f"**FAILED endpoint:** {failure}", ""]
    for ep in endpoints:
        ep_rows = [r.cells() for r in rows if r.endpoint == ep.name]
        if not ep_rows:
            continue
        print(f"== {ep.name} ({ep.url}) ==")
        for note in ep.notes:
            print(f"note: {note}")
        print(render_table(ep_rows, markdown=False))
        print()
        md += [f"## {ep.name}", "", *(f"- {n}" for n in ep.notes), "", render_table(ep_rows, markdown=True), ""]
    print("== targets ==")
    md += ["## Targets", ""]
    for verdict, text in targets:
        print(f"{verdict:4}  {text}")
        md.append(f"- **{verdict}** {text}")
    counts = {v: sum(1 for t in targets if t[0] == v) for v in ("PASS", "FAIL", "n/a")}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    print(f"targets: {summary or 'none evaluated'}")
    md += ["", f"Targets: {summary or 'none evaluated'}.", ""]
    if markdown_path:
        Path(markdown_path).write_text("\n".join(md))
        print(f"markdown written to {markdown_path}")
