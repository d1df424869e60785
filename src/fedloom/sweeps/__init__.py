"""Sweeps: grids of run configs x seeds, run as scheduler tasks, ending in a report
(``fedloom sweep``; :mod:`fedloom.sweeps.sweep`)."""
