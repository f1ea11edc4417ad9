"""The authenticity quality report (issue 4)."""

from stream_app.tools.quality.run import run_quality

__all__ = ["run_quality"]
