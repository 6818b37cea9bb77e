"""solens: the second-order lens for CLIP vision transformers."""

__version__ = "0.1.0"
