"""Google's Spherical Video V2 metadata in an MP4 that PyAV (FFmpeg) wrote: ``st3d`` (stereo layout) and
``sv3d`` (equirectangular projection) boxes appended to the video track's sample entry, as the RFC
(google/spatial-media, docs/spherical-video-v2-rfc.md) places them. YouTube, VLC and headset players read them.

FFmpeg's MP4 muxer writes ``moov`` after ``mdat`` unless asked for faststart, so growing it moves no
sample data; a file laid out otherwise is refused rather than rewritten.
"""

from __future__ import annotations

import struct
from pathlib import Path

STEREO_MODES = {"mono": 0, "top-bottom": 1, "left-right": 2}
_PATH = (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd")
_VISUAL_SAMPLE_ENTRY = 8 + 8 + 70  # box header, SampleEntry, VisualSampleEntry fields: then the child boxes
_FULL_BOX_CHILDREN = {b"stsd": 8}  # version/flags + entry count before stsd's children


class MetadataError(ValueError):
    """The file is not an MP4 this module can add metadata to."""


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _full_box(kind: bytes, payload: bytes) -> bytes:
    return _box(kind, b"\0\0\0\0" + payload)


def spherical_boxes(stereo: str, equirectangular: bool, source: str = "DepthFusion") -> bytes:
    """``st3d`` and, for a 360° panorama, ``sv3d`` (full equirectangular, no pose rotation)."""
    if stereo not in STEREO_MODES:
        raise ValueError(f"stereo must be one of {', '.join(STEREO_MODES)}, got {stereo!r}")
    boxes = _full_box(b"st3d", bytes([STEREO_MODES[stereo]]))
    if equirectangular:
        projection = _box(b"proj", _full_box(b"prhd", struct.pack(">iii", 0, 0, 0))
                          + _full_box(b"equi", struct.pack(">IIII", 0, 0, 0, 0)))
        boxes += _box(b"sv3d", _full_box(b"svhd", source.encode("utf-8") + b"\0") + projection)
    return boxes


def boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of the boxes in data[start:end] (sizes 0 and 1 as ISO/IEC 14496-12 defines them)."""
    end = len(data) if end is None else end
    found, offset = [], start
    while offset + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        if size == 1:
            if offset + 16 > end:
                raise MetadataError("truncated 64-bit box header")
            (size,) = struct.unpack_from(">Q", data, offset + 8)
        elif size == 0:
            size = end - offset
        if size < 8 or offset + size > end:
            raise MetadataError(f"box {kind!r} at {offset} has a bad size {size}")
        found.append((kind, offset, size))
        offset += size
    return found


def _top_level(path: Path) -> list[tuple[bytes, int, int]]:
    found, offset, total = [], 0, path.stat().st_size
    with path.open("rb") as f:
        while offset + 8 <= total:
            f.seek(offset)
            header = f.read(16)
            size, kind = struct.unpack_from(">I4s", header)
            if size == 1:
                (size,) = struct.unpack_from(">Q", header, 8)
            elif size == 0:
                size = total - offset
            if size < 8:
                raise MetadataError(f"{path}: box {kind!r} at {offset} has a bad size {size}")
            found.append((kind, offset, size))
            offset += size
    return found


def _video_sample_entry(moov: bytes) -> list[int]:
    """Offsets in moov of each box on the path to the video sample entry, the entry last."""
    for kind, offset, size in boxes(moov, 8, len(moov)):
        if kind != b"trak":
            continue
        chain, start, end = [0, offset], offset + 8, offset + size
        for name in _PATH[2:]:
            child = next(((o, s) for k, o, s in boxes(moov, start, end) if k == name), None)
            if child is None:
                break
            chain.append(child[0])
            start, end = child[0] + 8 + _FULL_BOX_CHILDREN.get(name, 0), child[0] + child[1]
        else:
            entries = boxes(moov, start, end)
            if entries and entries[0][0] in (b"avc1", b"hvc1", b"hev1", b"mp4v"):
                return chain + [entries[0][1]]
    raise MetadataError("no video track found")


def add_spherical_metadata(path: str | Path, stereo: str, equirectangular: bool) -> None:
    """Append st3d (and sv3d for a 360° panorama) to the video sample entry of the MP4 at ``path``."""
    path = Path(path)
    top = _top_level(path)
    moov = [(o, s) for k, o, s in top if k == b"moov"]
    if len(moov) != 1:
        raise MetadataError(f"{path}: expected one moov box, found {len(moov)}")
    offset, size = moov[0]
    if offset + size != path.stat().st_size or size >= 2**32:
        raise MetadataError(f"{path}: moov is not the last box (a faststart file); cannot add metadata safely")
    with path.open("rb") as f:
        f.seek(offset)
        data = bytearray(f.read(size))
    extra = spherical_boxes(stereo, equirectangular)
    chain = _video_sample_entry(bytes(data))
    entry = chain[-1]
    (entry_size,) = struct.unpack_from(">I", data, entry)
    if entry_size < _VISUAL_SAMPLE_ENTRY:
        raise MetadataError(f"{path}: video sample entry is too short")
    data[entry + entry_size:entry + entry_size] = extra
    for box in chain:  # every box that contains the new ones grows by their size
        (box_size,) = struct.unpack_from(">I", data, box)
        struct.pack_into(">I", data, box, box_size + len(extra))
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)
