"""`python -m stream_app.tools.quality [options]`: the quality report (`--help`)."""

import sys

from stream_app.tools.quality.run import run_quality

sys.exit(run_quality(sys.argv[1:]))
