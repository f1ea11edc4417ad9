"""I/O that is not Faust: the producer SDK and `publish`, settings and Kafka security, metrics and probes, logging,
the embedded broker, topic admin, command-line argument types, child processes. Never imports `streaming`."""
