"""edgecloud."""
