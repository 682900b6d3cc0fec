"""The MCP resources: `image://{image_id}` (images.py) and `style://{name}/preview` (styles.py)."""
