"""OpenFed's collaborator ``beta``, on fedloom (see aggregator.py)."""

from collaborator import collaborate

collaborate("beta", instances=30)
