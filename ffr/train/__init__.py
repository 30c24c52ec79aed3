"""Training: backbones, objectives and the one training loop."""
