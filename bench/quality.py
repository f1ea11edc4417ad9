"""The authenticity quality report (issue 4): `python bench/quality.py [--events N] [--seeds 1,2]`."""

import sys

from stream_app.tools.quality import run_quality

sys.exit(run_quality(sys.argv[1:]))
