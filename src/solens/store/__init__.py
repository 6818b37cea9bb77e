"""solens.store."""
