"""Numbers and scorers: classification metrics, the paired bootstrap, PGR and its diagnostics (metrics.py), and
the toxicity scorers of generated text (toxicity.py). Pure functions; nothing here trains or loads a model."""
