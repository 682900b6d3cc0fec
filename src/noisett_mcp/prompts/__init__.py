"""The MCP prompts: brand briefs that lead an assistant through list_styles and generate_image
(brand.py)."""
