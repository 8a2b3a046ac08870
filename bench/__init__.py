"""`make bench`: genstream measured side by side with two references (see bench/run.py)."""
