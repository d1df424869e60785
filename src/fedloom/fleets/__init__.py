"""Fleets: where a round's clients run (``fleet.kind``)."""

from fedloom.fleets.base import Fleet
from fedloom.fleets.serial import SerialFleet

__all__ = ["Fleet", "SerialFleet"]
