"""The gallery: Noisett's MCP App (`io.modelcontextprotocol/ui`). generate_image and get_image name the
`ui://` document below, which hosts with Apps render beside the result: live progress per image, the
full image, and actions that come back as tool calls. Hosts without Apps ignore it; the results are
the same for every client."""

from __future__ import annotations

from importlib.resources import files
from urllib.parse import urlsplit

from mcp.server.apps import Apps, ResourceCsp

from noisett_mcp.service import Noisett

GALLERY_URI = "ui://noisett/gallery.html"


def html() -> str:
    """The gallery document, shipped in the wheel beside this module."""
    return (files("noisett_mcp.app") / "gallery.html").read_text(encoding="utf-8")


def sas_origin(service: Noisett) -> str | None:
    """The origin of the store's SAS links, where Blob storage makes them; None for the local folder."""
    url = service.store_account_url()
    if url is None:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def csp(service: Noisett) -> ResourceCsp:
    """What the gallery may reach: nothing but images from the SAS host, and that only with Blob. All
    else (status, previews, full images from the local store, actions) goes through the host bridge."""
    origin = sas_origin(service)
    return ResourceCsp(connect_domains=[], resource_domains=[origin] if origin else [])


def apps(service: Noisett) -> Apps:
    """The Apps extension with the gallery resource; pass it to the server with `extensions=`."""
    extension = Apps()
    extension.add_html_resource(
        GALLERY_URI,
        html(),
        name="gallery",
        title="Noisett gallery",
        description="Live progress, the full images and follow-up actions for generate_image and get_image.",
        csp=csp(service),
        prefers_border=True,
    )
    return extension
