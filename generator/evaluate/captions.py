"""Caption files: plain text (one caption a line) or MS-COCO captions JSON (``captions_val2014.json``).

From COCO JSON, each image contributes its first caption (lowest annotation id), images in ascending id order,
so ``--n N`` takes the same N captions on every machine. No dataset is bundled.
"""

from __future__ import annotations

import json
from pathlib import Path

from td_bridge.params import generation_param

PROMPT_LIMIT = generation_param("prompt").max_length


def _from_coco(data: object, path: Path) -> list[str]:
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        return data
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: JSON that is neither MS-COCO captions ({{'annotations': [...]}}) nor a list of "
                         "strings")
    first: dict[int, tuple[int, str]] = {}
    for item in data["annotations"]:
        if not (isinstance(item, dict) and isinstance(item.get("caption"), str) and "image_id" in item):
            raise ValueError(f"{path}: an annotation without image_id and caption: {str(item)[:80]}")
        key, order = item["image_id"], item.get("id", 0)
        if key not in first or order < first[key][0]:
            first[key] = (order, item["caption"])
    return [first[key][1] for key in sorted(first)]


def read_captions(path: Path, n: int | None = None) -> list[str]:
    """The captions of ``path`` (the first ``n``), stripped; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such captions file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            captions = _from_coco(json.loads(text), path)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    else:
        captions = text.splitlines()
    captions = [" ".join(c.split()) for c in captions]
    captions = [c for c in captions if c]
    if not captions:
        raise ValueError(f"{path}: holds no captions")
    if n is not None:
        if n < 1:
            raise ValueError(f"--n must be at least 1, got {n}")
        if n > len(captions):
            raise ValueError(f"--n {n} asks for more captions than {path} holds ({len(captions)})")
        captions = captions[:n]
    too_long = [i for i, c in enumerate(captions, 1) if len(c) > PROMPT_LIMIT]
    if too_long:
        raise ValueError(f"{path}: caption {too_long[0]} is longer than a prompt may be ({PROMPT_LIMIT} characters)")
    return captions
