"""`oms console`: a live web console of orders, sagas, stock and services (a NATS client, like the CLI)."""
