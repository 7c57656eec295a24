"""The link benchmark's rows, tables and targets (printed, and optionally as markdown)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._export_common import format_size

#: Targets of the issue: on the shaped link ours at least as fast as the fastest tool and
#: at least this share of the link's capacity; peak RSS growth at most this; on the
#: unshaped loopback our export's wall at most this ratio of save + upload_file's.
TARGET_LINK_SHARE = 0.9
TARGET_RSS_MIB = 256
TARGET_UNSHAPED_RATIO = 1.0
MiB = 1024**2


@dataclass
class Row:
    """One measurement."""

    link: str  # "shaped" or "unshaped"
    direction: str  # "upload" or "download"
    size: int
    variant: str
    wall: float = 0.0
    save: float = 0.0
    peak_growth: int = 0
    archive_size: int = 0
    conns: dict[str, Any] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.problems

    @property
    def transfer(self) -> float:
        """Seconds on the link: the wall minus the save to a path (uploads)."""
        return max(1e-9, self.wall - self.save)

    @property
    def rate(self) -> float:
        """Archive bytes per second of wall."""
        return self.archive_size / self.wall if self.wall > 0 else 0.0

    @property
    def link_rate(self) -> float:
        """Archive bytes per second of transfer."""
        return self.archive_size / self.transfer if self.wall > 0 else 0.0


def _mb(rate: float) -> str:
    return f"{rate / 1e6:.0f}"


def table(rows: list[Row]) -> list[str]:
    """Markdown table lines of ``rows``."""
    lines = [
        "| variant | wall s | save s | transfer s | MB/s (wall) | MB/s (transfer) | peak RSS +MiB | connections "
        "(used / most at once) | checks |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r.error:
            lines.append(f"| {r.variant} | failed: {r.error[:160]} | | | | | | | |")
            continue
        conns = f"{r.conns.get('used', '?')} / {r.conns.get('max_concurrent', '?')}"
        lines.append(
            f"| {r.variant} | {r.wall:.2f} | {r.save:.2f} | {r.transfer:.2f} | {_mb(r.rate)} | {_mb(r.link_rate)} | "
            f"{r.peak_growth / MiB:+.0f} | {conns} | {', '.join(r.checks + r.problems)} |"
        )
    return lines


def _fastest_tool(rows: list[Row], ours: str) -> Row | None:
    tools = [r for r in rows if r.ok and r.variant != ours and not r.variant.startswith("ours")]
    return min(tools, key=lambda r: r.wall, default=None)


def targets(rows: list[Row], capacity: dict[str, float], sizes: list[int]) -> list[str]:
    """One line per target: met / not met with the numbers."""
    out: list[str] = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for size in sizes:
        for direction, ours_name in (("upload", "ours"), ("download", "load_artifact")):
            group = [r for r in rows if r.link == "shaped" and r.size == size and r.direction == direction]
            ours = next((r for r in group if r.variant == ours_name and r.ok), None)
            label = f"{format_size(size)} shaped {direction}"
            if ours is None:
                out.append(f"- {label}: no result for {ours_name}")
                continue
            fastest = _fastest_tool(group, ours_name)
            if fastest is not None:
                # Every upload row starts with the same torch.jit.save to a path, whose time is
                # the disk's: the transfer is what the variants do differently.
                quickest = min(
                    (r for r in group if r.ok and not r.variant.startswith("ours")), key=lambda r: r.transfer
                )
                out.append(
                    f"- {label}, {ours_name} at least as fast as the fastest tool: over the transfer "
                    f"{verdict(ours.transfer <= quickest.transfer)} ({ours.transfer:.2f} s vs {quickest.variant} "
                    f"{quickest.transfer:.2f} s); over the wall {verdict(ours.wall <= fastest.wall)} "
                    f"({ours.wall:.2f} s vs {fastest.variant} {fastest.wall:.2f} s)"
                )
            cap = capacity[direction]
            share = ours.link_rate / cap
            out.append(
                f"- {label}, {ours_name} at least {TARGET_LINK_SHARE:.0%} of the link's capacity "
                f"({_mb(cap)} MB/s): {verdict(share >= TARGET_LINK_SHARE)} ({_mb(ours.link_rate)} MB/s over the "
                f"transfer, {share:.0%}; {_mb(ours.rate)} MB/s over the wall)"
            )
            out.append(
                f"- {label}, {ours_name} peak RSS growth at most {TARGET_RSS_MIB} MiB: "
                f"{verdict(ours.peak_growth <= TARGET_RSS_MIB * MiB)} ({ours.peak_growth / MiB:+.0f} MiB)"
            )
        group = [r for r in rows if r.link == "unshaped" and r.size == size and r.direction == "upload"]
        ours_walls = [r.wall for r in group if r.variant == "ours" and r.ok]
        base_walls = [r.wall for r in group if r.variant == "upload_file" and r.ok]
        if ours_walls and base_walls:
            ours_wall, base_wall = statistics.median(ours_walls), statistics.median(base_walls)
            ratio = ours_wall / base_wall
            out.append(
                f"- {format_size(size)} unshaped upload, ours at most {TARGET_UNSHAPED_RATIO:.1f}x save + upload_file "
                f"(medians of {len(ours_walls)} and {len(base_walls)} runs): {verdict(ratio <= TARGET_UNSHAPED_RATIO)} "
                f"({ratio:.2f}x: {ours_wall:.2f} s vs {base_wall:.2f} s)"
            )
        hashed_walls = [r.wall for r in group if r.variant == "upload_file+sha256" and r.ok]
        if ours_walls and hashed_walls:
            hashed = statistics.median(hashed_walls)
            out.append(
                f"- {format_size(size)} unshaped upload, for comparison: ours against save + upload_file + the "
                f"file's sha256 (what a manifest needs): {statistics.median(ours_walls) / hashed:.2f}x "
                f"({statistics.median(ours_walls):.2f} s vs {hashed:.2f} s)"
            )
    return out


def report(
    rows: list[Row],
    header: list[str],
    capacity: dict[str, float],
    sizes: list[int],
    markdown: str | None,
    failures: list[str],
) -> None:
    """Print the tables and targets; write them to ``markdown`` too when given."""
    lines: list[str] = ["## Link speed", "", *(f"- {h}" for h in header), ""]
    for link in ("shaped", "unshaped"):
        for size in sizes:
            for direction in ("upload", "download"):
                group = [r for r in rows if r.link == link and r.size == size and r.direction == direction]
                if not group:
                    continue
                lines += [
                    f"### {link} link, {format_size(size)} TorchScript archive, {direction}",
                    "",
                    *table(group),
                    "",
                ]
                notes = sorted({f"{r.variant}: {r.note}" for r in group if r.note})
                lines += [*(f"- {n}" for n in notes), *([""] if notes else [])]
    lines += ["### Targets", "", *targets(rows, capacity, sizes), ""]
    if failures:
        lines += ["### Failures", "", *(f"- {f}" for f in failures), ""]
    text = "\n".join(lines)
    print("\n" + text)
    if markdown:
        Path(markdown).write_text(text + "\n")
        print(f"wrote {markdown}")
