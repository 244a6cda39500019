"""The methods of weak-to-strong training as functions: losses.py (every student loss), labels.py (what a student
trains on, made from weak and strong predictions), probe.py (fitted linear heads on frozen features)."""
