"""Alignment-failure detectors (pure), and the runner that tails the event store (docs/monitors.md)."""
