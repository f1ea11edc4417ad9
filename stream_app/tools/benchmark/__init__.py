"""`stream-app bench` (SPEC §10, issue 9): the scorer's throughput against the raw-consumer ceiling, a no-op Faust
agent and a Quix Streams peer, on envelopes and on single records; flat-with-state, memory and restart on a
hot-video workload; a realtime soak with write amplification; and where the scorer's time goes. One run, one
`## Throughput` section of bench/RESULTS.md. The method is in bench/README.md.

Modules: `run` (the command and the order of the measurements), `throughput` (raw, no-op, scorer), `quix` (the
Quix Streams peer), `hot` (the hot-video workload, flat with state, restart), `soak` (realtime soak), `profile`
(py-spy summary), `report` (targets and the Markdown section), `common` (brokers, subprocesses, /proc, /metrics).
"""

from stream_app.tools.benchmark.common import BenchError, machine_info, processed_events, worker_env
from stream_app.tools.benchmark.report import replace_section, write_section
from stream_app.tools.benchmark.run import run_bench

__all__ = [
    "BenchError",
    "machine_info",
    "processed_events",
    "replace_section",
    "run_bench",
    "worker_env",
    "write_section",
]
