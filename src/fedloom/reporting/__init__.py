"""Plots and reports from a run's metrics."""
