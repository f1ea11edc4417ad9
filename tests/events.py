"""Input events for tests (SPEC §3): a valid view or interaction as the JSON object an upstream team publishes,
every field overridable. One builder for the suite, so a schema change is made here once."""

from __future__ import annotations

from typing import Any


def view_event(event_id: str, video_id: str, viewer_id: str, ts: int, **fields: Any) -> dict[str, Any]:
    """A valid `video-views` event: creator c1, a 10 s watch of a 2 min video from the For You feed in the US, on
    the viewer's own device (`d-<viewer>`); `fields` override or add any field."""
    own = {"watch_ms": 10_000, "video_ms": 120_000, "source": "for_you", "region": "US"}
    return _event(event_id, video_id, viewer_id, ts, own, fields)


def interaction_event(
    event_id: str, video_id: str, viewer_id: str, ts: int, kind: str = "like", **fields: Any
) -> dict[str, Any]:
    """A valid `video-interactions` event (creator c1, the viewer's own device); `fields` override any field."""
    return _event(event_id, video_id, viewer_id, ts, {"kind": kind}, fields)


def _event(
    event_id: str, video_id: str, viewer_id: str, ts: int, own: dict[str, Any], fields: dict[str, Any]
) -> dict[str, Any]:
    """The fields every event has, in the SPEC's order, then the topic's own, then the overrides."""
    event: dict[str, Any] = {
        "event_id": event_id,
        "video_id": video_id,
        "creator_id": "c1",
        "viewer_id": viewer_id,
        "device_id": f"d-{viewer_id}",
        "ts": ts,
        **own,
    }
    event.update(fields)
    return event
