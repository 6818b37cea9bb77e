"""solens.segment."""
