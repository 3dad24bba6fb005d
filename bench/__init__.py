"""`make bench`: the gateway measured against its floors (see bench/run.py)."""
