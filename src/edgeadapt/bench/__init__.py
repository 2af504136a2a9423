"""Benchmarks that print their figures and save them as JSON."""
