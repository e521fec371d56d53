"""Thin Hydra entry points. Each imports heavy libraries inside its function, never at the top."""
