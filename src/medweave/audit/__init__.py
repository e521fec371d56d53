"""medweave-audit: measure what a trained model leaks about its training subjects (membership
inference, canary exposure). Attack maths in attacks.py, planted canaries in canaries.py."""
