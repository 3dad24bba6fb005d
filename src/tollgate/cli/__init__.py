"""Command-line clients of a running gateway (not part of the gateway itself)."""
