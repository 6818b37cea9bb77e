"""solens.synth."""
