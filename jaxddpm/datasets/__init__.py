"""Data files that ship with jaxddpm (see README.md here)."""
