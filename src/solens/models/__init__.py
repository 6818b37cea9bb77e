"""solens.models."""
