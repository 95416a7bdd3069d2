"""Local services (Kafka, PostgreSQL) for tests and the demo; not used in production."""
