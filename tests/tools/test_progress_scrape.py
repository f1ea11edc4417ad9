"""The tools watch a worker's progress through /metrics several times a second: they ask for the progress metrics
only (harness.progress_url), which the worker renders without its process, platform and GC collectors."""

from __future__ import annotations

from stream_app.edges.metrics import RewardsMetrics, new_registry, start_http_server
from stream_app.tools.harness import PROGRESS_METRICS, processed_events, progress_url, scrape


def test_the_progress_scrape_holds_what_progress_needs_and_not_the_process_collectors() -> None:
    metrics = RewardsMetrics(new_registry())
    metrics.count_outcome("video-views", "accepted", 7)
    metrics.count_outcome("video-interactions", "suspicious", 2)
    metrics.set_pending_interactions(3)
    server = start_http_server(metrics, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        whole, progress = scrape(url), scrape(progress_url(url))
    finally:
        server.shutdown()
    assert whole is not None and progress is not None
    assert processed_events(progress) == processed_events(whole) == 12
    assert any(name.startswith("process_") for name in whole)  # what the restricted scrape leaves out
    families = {name.split("{")[0] for name in progress}
    assert families <= set(PROGRESS_METRICS) and {"rewards_events_total", "rewards_worker_ready"} <= families
    assert len(progress) < len(whole) / 3
