"""`python -m stream_app.tools.benchmark [options]`: the benchmark; `noop-worker` / `quix-worker`: its peer workers."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "noop-worker":
        from stream_app.tools.benchmark.throughput import noop_worker_main

        return noop_worker_main(argv[1:])
    if argv and argv[0] == "quix-worker":
        from stream_app.tools.benchmark.quix import quix_worker_main

        return quix_worker_main(argv[1:])
    from stream_app.tools.benchmark.run import run_bench

    return run_bench(list(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
