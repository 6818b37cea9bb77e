"""solens.experiments."""
