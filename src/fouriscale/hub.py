"""Whether something not on this machine can be fetched right now: the Hugging Face Hub's offline switch and a quick
connection test, so that a model, a CLIP model or metric weights that are not cached fail at once, in one line,
instead of after the libraries' retries."""

from __future__ import annotations

import socket
import urllib.parse
import urllib.request

from huggingface_hub import constants

from .errors import one_line

__all__ = ["HUB_TIMEOUT", "offline", "unreachable", "hub_unreachable"]

#: Seconds to wait for a host before it is reported unreachable.
HUB_TIMEOUT = 5.0


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it (fouriscale downloads nothing else while it is set)."""
    return bool(constants.HF_HUB_OFFLINE)


def unreachable(url: str) -> str | None:
    """``None`` when the host of ``url`` accepts a connection within :data:`HUB_TIMEOUT` seconds, else why not.
    With a proxy configured the proxy is asked instead (the connection beyond it is then its business)."""
    target = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(target.scheme)
    via = urllib.parse.urlsplit(proxy if "://" in (proxy or "") else f"http://{proxy}") if proxy else target
    host, port = via.hostname, via.port or (443 if via.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=HUB_TIMEOUT):
            return None
    except OSError as exc:
        return f"cannot reach {url} ({one_line(exc, 120)})"


def hub_unreachable() -> str | None:
    """:func:`unreachable` for the Hugging Face Hub (``HF_ENDPOINT``)."""
    return unreachable(constants.ENDPOINT)
