"""solens.describe."""
