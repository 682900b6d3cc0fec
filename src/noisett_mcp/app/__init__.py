"""Noisett's MCP App: the gallery document and the Apps extension that serves it (gallery.py)."""
