"""The Faust wiring: the app and its topology, the agents' batch processing over the domain, the tables, and every
Faust or aiokafka private access in one module (faust_compat.py). Feeds the domain; never the other way round."""
