"""`stream-app bench` (SPEC §10, issue 9): the scorer's throughput against the raw-consumer ceiling, a no-op Faust
agent and a Quix Streams peer, on envelopes and on single records; flat-with-state, memory and restart on a
hot-video workload; a realtime soak with write amplification; and where the scorer's time goes. One run, one
`## Throughput` section of bench/RESULTS.md. The method is in bench/README.md.

Modules: `run` (the command and the order of the measurements), `throughput` (raw, no-op, scorer), `quix` (the
Quix Streams peer), `hot` (the hot-video workload, flat with state, restart), `soak` (realtime soak), `profile`
(py-spy summary), `report` (targets and the Markdown section), `common` (a measurement's figures, time limits,
changelog offsets, py-spy). Brokers, worker subprocesses, /metrics, /proc and the results file are the tools'
shared harness (stream_app/tools/harness.py).
"""

from stream_app.tools.benchmark.common import BenchError
from stream_app.tools.benchmark.run import run_bench

__all__ = ["BenchError", "run_bench"]
