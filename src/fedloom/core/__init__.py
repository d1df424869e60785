"""Core data: flat parameter layouts, typed packages, generators, metrics, errors."""
