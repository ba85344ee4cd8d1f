"""The page's LAN address as a QR code in the terminal, for a phone or headset to scan (qrcode makes the code)."""

from __future__ import annotations

from typing import TextIO

QUIET = 2  # light modules around the code; scanners want some margin, terminals are narrow
# Two module rows per character: (top dark, bottom dark) → the character, for a light-on-dark terminal, where a
# "light" module is a filled block and a dark one the terminal's background.
HALF_BLOCKS = {(False, False): "█", (False, True): "▀", (True, False): "▄", (True, True): " "}


def modules(text: str) -> list[list[bool]]:
    """The QR code of ``text`` (error correction M, the smallest version that holds it), True = dark, with a quiet
    zone of QUIET light modules."""
    import qrcode

    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=QUIET)
    code.add_data(text)
    code.make(fit=True)
    return code.get_matrix()


def terminal_qr(text: str) -> str:
    """``text`` as a QR code of half-block characters, two module rows a line."""
    rows = modules(text)
    if len(rows) % 2:
        rows = [*rows, [False] * len(rows[0])]
    return "\n".join("".join(HALF_BLOCKS[top, bottom] for top, bottom in zip(rows[y], rows[y + 1]))
                     for y in range(0, len(rows), 2))


def print_qr(text: str, stream: TextIO) -> bool:
    """Print ``text``'s QR code on ``stream``; False where the stream cannot show the block characters (a console
    or file in a legacy code page)."""
    drawing = terminal_qr(text)
    try:
        stream.write(drawing + "\n")
        stream.flush()
    except UnicodeEncodeError:
        return False
    return True
