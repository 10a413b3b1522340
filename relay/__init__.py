"""relay: ScyllaDB CDC outbox → Kafka."""

__version__ = "0.1.0"
