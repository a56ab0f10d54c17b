"""The core: one of each, and nothing mechanism-specific."""
