"""pets: fast.ai Lesson 1 (which cat or dog breed is this photo?) as a reproducible workflow."""

__version__ = "0.1.0"
