"""One training run's machinery, which train.py puts together: its config, the job (data, model, targets), the
runtime, batches, the optimizer, stored features, predictions and generation, run directories, tracking; and the
methods that need a run: students.py (a student's targets), ensemble.py (bootstrap members and their votes),
prompting.py (prompting baselines)."""
