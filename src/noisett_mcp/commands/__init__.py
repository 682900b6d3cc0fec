"""The bodies of the `noisett-mcp` commands and the checks made before them; cli.py parses and dispatches."""
