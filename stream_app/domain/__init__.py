"""The pure core: events, validation, the policy and reward formula, the authenticity rules and their memories,
windows, per-video ledgers, a partition's scoring, the device judge, and the stored forms of all of it. No Kafka,
no Faust, no asyncio, no clock: only the standard library and orjson (tests/test_layers.py holds the line)."""
