"""Scores from predictions, no model needed: clinical figures at an operating point, bootstrap and Wilson intervals,
calibration, subgroups, hyperparameter importance.
"""
