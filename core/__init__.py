"""The bottom layer, imported by every other: the command line and its one-line errors (cli.py), file digests
(digests.py) and the one place w2s talks to the Hugging Face Hub (hub.py)."""
