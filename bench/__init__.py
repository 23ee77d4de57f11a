"""Benchmarks that print figures; never asserted in tests (machines are noisy)."""
