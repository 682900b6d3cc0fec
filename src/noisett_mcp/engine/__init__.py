"""The GPU side. Only this package imports torch and diffusers, and only when a model is loaded:
importing `noisett_mcp.engine` itself stays cheap so the MCP server can answer at once."""
