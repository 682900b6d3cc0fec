"""Command modules of `noisett-mcp`: each registers its subcommand in cli.py with a few lines."""
