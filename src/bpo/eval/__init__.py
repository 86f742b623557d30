"""Evaluation: a run's own at its end, bpo eval, bpo compare's grids, reports and model cards."""
