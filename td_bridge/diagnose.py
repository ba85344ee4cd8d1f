"""The TouchDesigner component's self-check report: problems, warnings and notes in plain text.

DepthFusionExt.Diagnose fills one in the running TouchDesigner and writes ``text()`` into the
component's ``diagnostics`` Text DAT (for bug reports) and ``summary()`` into its Status.
"""

from __future__ import annotations


class Report:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.notes: list[str] = []

    def problem(self, line: str) -> None:
        """Something that does not work as intended."""
        self.problems.append(line)

    def warning(self, line: str) -> None:
        """Something that works but may not where you run it (e.g. a size over a licence limit)."""
        self.warnings.append(line)

    def note(self, line: str) -> None:
        self.notes.append(line)

    def summary(self) -> str:
        if not self.problems and not self.warnings:
            return "diagnose: OK"
        counts = [f"{len(self.problems)} problem{'s' * (len(self.problems) != 1)}"]
        if self.warnings:
            counts.append(f"{len(self.warnings)} warning{'s' * (len(self.warnings) != 1)}")
        return f"diagnose: {', '.join(counts)} (see the diagnostics DAT)"

    def text(self) -> str:
        sections = [("PROBLEMS", self.problems), ("WARNINGS", self.warnings), ("CHECKED", self.notes)]
        lines = ["DepthFusion diagnostics: paste this into a bug report.", self.summary(), ""]
        for title, entries in sections:
            lines.append(f"{title} ({len(entries)})")
            lines += [f"  - {entry}" for entry in entries] or ["  (none)"]
            lines.append("")
        return "\n".join(lines)
