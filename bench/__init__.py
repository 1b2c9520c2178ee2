"""Benchmarks: the service against a bare ASGI reference, driven by wrk (`make bench`)."""
