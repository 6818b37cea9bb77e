"""solens.attack."""
