"""Tasks: what a task type picks (types.py) and tasks defined as ACES config files (aces.py)."""
