"""Kafka in: the poll loop, decoding and validation, dead letters, offset tracking."""
