"""Output control: what a researcher may take out of the platform, checked (medweave-export)."""
