"""
The command that evaluates run directories written by w2s.py: `python eval.py runs/safety` (--help for its flags).
The code is evaluation.py's (loading and checking, scoring, PGR, results.json; the tables and plots: report.py):
modules import `evaluation`, never this file, whose name is Python's built-in `eval`.
"""
from core import cli
from experiment import evaluation

if __name__ == "__main__":
    cli.main_guard(evaluation.main)
