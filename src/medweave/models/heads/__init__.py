"""Task heads: output layer, loss and the score used by metrics, per task type."""
