"""alignd's client for applications: log interactions and feedback to Kafka without slowing a request down.

See docs/client.md. This package imports nothing of the daemon (docs/client.md): an application that logs its
interactions needs kafka-python and nothing else.
"""

from alignd.client import AligndClient, ClientStats, otel_request_id

__all__ = ["AligndClient", "ClientStats", "otel_request_id"]
