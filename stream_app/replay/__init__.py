"""`stream-app replay` (SPEC §11): policy what-if and reconciliation of the ledger, over the retained input.

engine.py scores decoded input under two policies with the worker's own domain code (pure); device_rules.py is
the adapter that runs the device rules without Kafka; reading.py is its own read-only consumer; ledger.py reads
and compares the workers' ledger; report.py writes the five files; command.py ties them together.
"""
