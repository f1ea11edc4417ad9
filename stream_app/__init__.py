"""The creator-rewards scorer: `domain` (pure scoring), `streaming` (the Faust wiring), `edges` (I/O that is not
Faust), `replay` (`stream-app replay`), `tools` (simulator, benchmark, quality report, demo: never imported by the
product), `cli` (`stream-app`) and `app` (`faust -A stream_app.app`). README, "Where things live", maps each module."""
