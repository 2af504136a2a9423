"""Benchmarks that print and save their figures as JSON."""
