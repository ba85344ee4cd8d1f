"""The licence of every model DepthFusion names, where each entry was read, and the ``--commercial`` check.

``commercial`` is ``yes``, ``no``, ``territory-limited`` or ``unknown``; ``--commercial`` accepts only ``yes`` and
refuses the rest with the reason, before any weights load. Anything not in the table (a local folder, a LoRA
file, another hub id) is ``unknown``, except a folder whose ``README.md`` model card declares a licence in its
front matter (``license: apache-2.0``), which is read as the card of a hub snapshot would be. The entries record
what the cited page said when it was read (December 2026); licences change, so the source is kept with each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

YES, NO, TERRITORY, UNKNOWN = "yes", "no", "territory-limited", "unknown"
COMMERCIAL = (YES, NO, TERRITORY, UNKNOWN)
HUB = "https://huggingface.co/"


@dataclass(frozen=True)
class Licence:
    licence: str
    commercial: str  # one of COMMERCIAL
    source: str  # the page the licence was read from, and how
    excluded: tuple[str, ...] = ()  # territories the licence leaves out
    note: str = ""

    def record(self, component: str) -> dict[str, object]:
        """What a frame's metadata keeps about one component that made it."""
        return {"component": component, "licence": self.licence, "commercial": self.commercial,
                "source": self.source, **({"excluded": list(self.excluded)} if self.excluded else {}),
                **({"note": self.note} if self.note else {})}


# Licence identifiers as model cards' front matter spells them → whether they allow commercial use.
CARD_IDS: dict[str, tuple[str, str]] = {
    "apache-2.0": ("Apache-2.0", YES),
    "mit": ("MIT", YES),
    "creativeml-openrail-m": ("CreativeML OpenRAIL-M", YES),
    "openrail++": ("CreativeML OpenRAIL++-M", YES),
    "cc-by-nc-4.0": ("CC-BY-NC-4.0", NO),
    "cc-by-nc-sa-4.0": ("CC-BY-NC-SA-4.0", NO),
}
_OPENRAIL = "commercial use allowed under the licence's use restrictions"
_CARD = "model card metadata, read through a mirror of the card"
_TAG = "the hub page's licence tag, read through a search index's copy of the page"


def _card(model: str, how: str = _CARD) -> str:
    return f"{HUB}{model} ({how})"


def _ldm3d() -> dict[str, Licence]:
    openrail = "CreativeML OpenRAIL-M"
    return {
        "Intel/ldm3d-pano": Licence(openrail, YES, _card("Intel/ldm3d-pano"), note=_OPENRAIL),
        "Intel/ldm3d-4c": Licence(openrail, YES, _card("Intel/ldm3d-4c"), note=_OPENRAIL),
        "Intel/ldm3d": Licence(openrail, YES, _card("Intel/ldm3d", _TAG), note=_OPENRAIL),
        "Intel/ldm3d-sr": Licence(openrail, YES, _card("Intel/ldm3d-sr", _TAG), note=_OPENRAIL),
    }


def _classify(licence: str) -> tuple[str, str]:
    """(licence name, commercial) of a card id (``apache-2.0``) or a name (``Apache-2.0``); unknown otherwise."""
    for card_id, (name, commercial) in CARD_IDS.items():
        if licence.lower() in (card_id, name.lower()):
            return name, commercial
    return "unknown", UNKNOWN


def _estimators() -> dict[str, Licence]:
    """From the estimator module's own table (generator/estimators/checkpoints.py)."""
    from ..estimators.checkpoints import KNOWN

    table = {}
    for model, checkpoint in KNOWN.items():
        name, commercial = _classify(checkpoint.licence)
        how = "docs/depth.md, from the card" if commercial != UNKNOWN else "the card was not read here"
        table[model] = Licence(name, commercial, _card(model, how), note=checkpoint.note)
    return table


def _fast_loras() -> dict[str, Licence]:
    """The --fast presets' LoRAs (generator/fast.py records each card's licence)."""
    from ..fast import PRESETS

    table = {}
    for preset in PRESETS.values():
        name, commercial = _classify(preset.licence)
        table["/".join(preset.lora.split("/")[:2])] = Licence(
            name, commercial, f"{preset.card} (generator/fast.py, from the card)",
            note="" if commercial != UNKNOWN else preset.licence)
    return table


def _panoramas() -> dict[str, Licence]:
    """The 360° presets' models and LoRAs (generator/backends/pano_presets.py)."""
    flux_nc = "FLUX.1 [dev] Non-Commercial License"
    civitai = "https://civitai.com/models/735980 (the LoRA's page, read through a search index)"
    return {
        "ProGamerGov/qwen-360-diffusion": Licence("MIT", YES, _card("ProGamerGov/qwen-360-diffusion"),
                                                  note="a LoRA on Qwen/Qwen-Image"),
        "Qwen/Qwen-Image": Licence("Apache-2.0", YES, "https://github.com/QwenLM/Qwen-Image (README: \"Qwen-Image is "
                                   "licensed under Apache 2.0\"; read through a search index)"),
        "ProGamerGov/sdxl-360-diffusion": Licence(
            "none stated", UNKNOWN, _card("ProGamerGov/sdxl-360-diffusion", "the card, read through a mirror: its "
                                          "metadata declares no licence and the repository has no LICENSE file"),
            note="a fine-tune of SDXL 1.0 base (CreativeML OpenRAIL++-M); ask its author before commercial use"),
        "stabilityai/stable-diffusion-xl-base-1.0": Licence(
            "CreativeML OpenRAIL++-M", YES, _card("stabilityai/stable-diffusion-xl-base-1.0"), note=_OPENRAIL),
        "CedarC/Z-Image_360": Licence("Apache-2.0", YES, _card("CedarC/Z-Image_360"),
                                      note="a LoRA for Tongyi-MAI/Z-Image-Turbo (its card's base_model)"),
        "Tongyi-MAI/Z-Image-Turbo": Licence("Apache-2.0", YES, _card("Tongyi-MAI/Z-Image-Turbo", _TAG)),
        "black-forest-labs/FLUX.1-dev": Licence(flux_nc, NO, f"{civitai}: it reproduces the base model's notice"),
        "civitai:735980": Licence(flux_nc, NO, civitai, note="ProGamerGov's Flux equirectangular 360° LoRA, "
                                  "for FLUX.1 [dev]"),
    }


def table() -> dict[str, Licence]:
    """Every model, estimator and LoRA the project names → its licence."""
    return {**_ldm3d(), **_estimators(), **_fast_loras(), **_panoramas()}


_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)
_LICENSE_LINE = re.compile(r"^license:\s*['\"]?([\w.+-]+)['\"]?\s*$", re.M)


def card_licence(folder: Path) -> Licence | None:
    """The licence a model folder's README.md front matter declares, when it is one of CARD_IDS."""
    card = folder / "README.md"
    try:
        text = card.read_text(encoding="utf-8")[:20000] if card.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return None
    front = _FRONT_MATTER.match(text)
    declared = _LICENSE_LINE.search(front.group(1)) if front else None
    if declared is None or declared.group(1).lower() not in CARD_IDS:
        return None
    name, commercial = CARD_IDS[declared.group(1).lower()]
    return Licence(name, commercial, f"{card} (front matter)")


def licence_of(component: str) -> Licence:
    """The licence of a hub id, ``owner/repo/FILE`` (its repository's), folder or file; unknown when unrecorded."""
    known = table()
    parts = component.strip("/").split("/")
    for key in (component, "/".join(parts[:2])):
        if key in known:
            return known[key]
    path = Path(component).expanduser()
    for folder in (path, path.parent) if path.exists() else ():
        found = card_licence(folder) if folder.is_dir() else None
        if found is not None:
            return found
    return Licence("unknown", UNKNOWN, "not in DepthFusion's licence table and no model card with a licence "
                   "beside it")


def records(components: Iterable[str]) -> list[dict[str, object]]:
    """A frame's ``licences``: one record per component, in order, each once."""
    return [licence_of(component).record(component) for component in dict.fromkeys(components)]


def commercial_problems(components: Iterable[str]) -> list[str]:
    """Why each component that is not cleared for commercial use is refused (empty: all are)."""
    problems = []
    for component in dict.fromkeys(components):
        licence = licence_of(component)
        if licence.commercial == YES:
            continue
        why = {NO: "does not allow commercial use", UNKNOWN: "has no licence DepthFusion could confirm",
               TERRITORY: f"excludes territories ({', '.join(licence.excluded) or 'see its licence'})"}
        problems.append(f"{component}: {licence.licence} {why[licence.commercial]} (source: {licence.source})")
    return problems
