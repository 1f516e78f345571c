"""difftrain: train diffusion image models, from a folder of images to a served model."""

__version__ = "0.1.0"
