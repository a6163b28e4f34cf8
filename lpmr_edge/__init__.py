"""lpmr-edge: measure what quantization does to CLIP reliability, through the runtime that ships."""

__version__ = "0.1.0"
