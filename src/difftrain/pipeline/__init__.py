"""What train, sample, evaluate and serve share: build from config, checkpoints, generation."""
