"""A whole experiment, above train.py: its stage graph (stages.py), the SLURM launcher (slurm.py), evaluation of a
run directory (evaluation.py) and its report (report.py)."""
