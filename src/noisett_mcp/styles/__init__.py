"""Brand styles: manifests (manifest.py), the catalog of those offered for the model (catalog.py), and
`noisett-mcp styles check` (check.py). Torch-free: list_styles answers before the model loads."""
