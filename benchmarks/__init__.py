"""bench.py's sections, one file each."""
