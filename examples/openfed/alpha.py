"""OpenFed's collaborator ``alpha``, on fedloom (see aggregator.py)."""

from collaborator import collaborate

collaborate("alpha", instances=10)
