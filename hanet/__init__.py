"""hanet: keeps two servers talking when a network path between them breaks."""
__version__ = "0.1.0"
