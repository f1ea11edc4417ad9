"""The worker's Faust app, built from the environment, for `faust -A stream_app.app worker`."""

from __future__ import annotations

from stream_app.edges.settings import load_settings
from stream_app.streaming.app import build_app

scorer = build_app(load_settings())
app = scorer.faust

__all__ = ["app", "scorer"]
