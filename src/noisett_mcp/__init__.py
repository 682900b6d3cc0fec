"""Noisett MCP: brand-style image generation for AI assistants, on your own GPU."""

__version__ = "0.1.0"
