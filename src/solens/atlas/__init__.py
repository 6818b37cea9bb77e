"""solens.atlas."""
