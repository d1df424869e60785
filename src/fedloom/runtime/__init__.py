"""The server runtime: the round loop and what turns a config into a run directory."""
