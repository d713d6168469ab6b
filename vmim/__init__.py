"""vmim: masked video-and-image pretraining."""

__version__ = "0.1.0"
