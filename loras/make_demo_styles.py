"""Make the weights of the built-in demo styles (src/noisett_mcp/demo_styles/*.safetensors).

Tiny random LoRA adapters for the demo model (`NOISETT_MODEL=demo`), made offline with peft on the demo
transformer. They ship inside the package so that `noisett-mcp generate ... --model demo --style
demo-flat` works straight from the wheel. The tensors are the same on every run (the order of the
header's metadata entries may differ). Run from the repository root:

    python loras/make_demo_styles.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from noisett_mcp.engine.demo_loras import demo_transformer, write_random_lora
from noisett_mcp.styles import DEMO_STYLES_DIR, sha256_file

# (style name, seed): the manifests next to the weights name these files.
DEMO_STYLES = [("demo-flat", 101), ("demo-grain", 202)]


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        transformer = demo_transformer(Path(cache))
        for name, seed in DEMO_STYLES:
            path = write_random_lora(transformer, DEMO_STYLES_DIR / f"{name}.safetensors", seed, rank=2)
            path.chmod(0o644)
            print(f"{path}  {path.stat().st_size} bytes  sha256 {sha256_file(path)}")


if __name__ == "__main__":
    main()
