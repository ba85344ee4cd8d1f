"""The evaluation report: results.json (everything) and report.md (tables with the published numbers beside)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

# (key in a result row, column heading, decimals)
TEXT2RGBD_COLUMNS = (("guidance", "guidance", 1), ("steps", "steps", 0), ("images", "images", 0),
                     ("fid", "FID ↓", 2), ("is", "IS ↑", 2), ("is_std", "IS std", 2), ("clip", "CLIP ↑", 2),
                     ("abs_rel", "AbsRel ↓", 4), ("rmse", "RMSE [m] ↓", 3), ("delta1", "δ1 ↑", 3),
                     ("mare", "MARE ↓", 3))
AUTOENCODER_COLUMNS = (("model", "model", None), ("images", "images", 0), ("rfid", "rFID ↓", 2),
                       ("psnr", "PSNR [dB] ↑", 2), ("ssim", "SSIM ↑", 4), ("depth_abs_rel", "depth AbsRel ↓", 4),
                       ("depth_delta1", "depth δ1 ↑", 3), ("depth_rmse", "depth RMSE ↓", 4))


def _cell(value: Any, decimals: int | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (int, float)) and decimals is not None:
        return f"{value:.{decimals}f}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, int | None]]) -> str:
    """A Markdown table of the columns any row has."""
    used = [c for c in columns if any(row.get(c[0]) is not None for row in rows)]
    lines = ["| " + " | ".join(head for _, head, _ in used) + " |", "|" + "---|" * len(used)]
    lines += ["| " + " | ".join(_cell(row.get(key), dec) for key, _, dec in used) + " |" for row in rows]
    return "\n".join(lines)


def write(output: Path, result: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    output.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output / "results.json", output / "report.md"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    return json_path, md_path


def summarise(result: dict[str, Any], output: Path) -> None:
    """One line per result row on stdout, and where the report went."""
    for row in result["results"]:
        print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    print(f"wrote {output / 'report.md'} and {output / 'results.json'}")
