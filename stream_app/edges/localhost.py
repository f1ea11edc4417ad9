"""Small helpers for processes this project runs on loopback: a free port, and a scrape of a /metrics page."""

from __future__ import annotations

import socket
import urllib.request


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape_metrics(url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """Prometheus text at `url` as {'name{labels}': value} (samples only, comments skipped)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # loopback URLs this project built
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
