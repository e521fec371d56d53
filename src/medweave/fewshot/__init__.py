"""Few-shot curves (EHRSHOT protocol): seeded k-shot draws shared by every arm, the arms, the report."""
