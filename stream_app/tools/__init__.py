"""The product's tooling: what measures, feeds and shows the scorer, never part of it.

`harness` (brokers, worker subprocesses, /metrics, topics read back, result sections, machine info: what every tool
shares), `benchmark/` (`stream-app bench`), `quality/` (the labelled-fraud quality report), `simulator/` (`stream-app
simulate`: labelled traffic and its publisher), `demo` (`stream-app demo`). The product (domain, streaming, edges,
replay) never imports this package (tests/test_layers.py); the command line (`stream_app/cli.py`) is a thin layer
over it.
"""
