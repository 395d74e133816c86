"""Static analysis: reading sources (scripts, notebooks) into a resolved module context."""
