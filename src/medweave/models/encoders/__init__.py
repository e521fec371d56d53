"""One encoder per modality: ``forward(inputs) -> float [B, dim]`` and an ``out_dim`` attribute."""
