"""solens.lens."""
