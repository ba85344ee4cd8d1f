"""ZeroMQ endpoint checks: loopback by default, LAN only when asked for."""

from __future__ import annotations

import ipaddress
import re

DEFAULT_FRAMES = "tcp://127.0.0.1:5555"
DEFAULT_COMMANDS = "tcp://127.0.0.1:5556"

_TCP_RE = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.*-]+):(?P<port>\*|\d{1,5})$")


class AddressError(ValueError):
    """An endpoint string is malformed or not allowed."""


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(address: str, *, bind: bool = False, allow_lan: bool = False) -> str:
    """Return ``address`` if it is a usable tcp:// (or ipc:// / inproc://) endpoint.

    Binding to anything but loopback needs ``allow_lan``; port ``*`` (any free port) is
    accepted for binding only.
    """
    if not isinstance(address, str) or len(address) > 256:
        raise AddressError(f"endpoint must be a string of at most 256 characters, got {address!r}")
    if address.startswith(("ipc://", "inproc://")):
        if len(address.split("://", 1)[1]) == 0:
            raise AddressError(f"endpoint {address!r} has no path")
        return address
    match = _TCP_RE.match(address)
    if not match:
        raise AddressError(f"endpoint {address!r} is not of the form tcp://HOST:PORT (e.g. {DEFAULT_FRAMES})")
    host, port = match["host"], match["port"]
    if port == "*":
        if not bind:
            raise AddressError(f"cannot connect to {address!r}: name a port")
    elif not 1 <= int(port) <= 65535:
        raise AddressError(f"port {port} in {address!r} is outside 1-65535")
    if bind and not is_loopback(host) and not allow_lan:
        raise AddressError(
            f"refusing to bind {address!r}: it is reachable from the network; "
            "pass --allow-lan to expose DepthFusion on purpose"
        )
    if not bind and host == "*":
        raise AddressError(f"cannot connect to {address!r}: name a host")
    return address
