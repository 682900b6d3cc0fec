"""The LoRA adapters of one loaded pipeline: each style's adapter is loaded once (under a name that
includes its weights' sha256, so changed weights load fresh) and a run switches to it with
`set_adapters`, which costs about a millisecond. The base style runs with LoRA disabled.

Only the generation worker calls this, between runs: nothing here is thread-safe on its own.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator

import torch
from diffusers import HiDreamImagePipeline

from noisett_mcp.errors import StyleRefused
from noisett_mcp.styles.manifest import Style, check_modules

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _expected_peft_warnings() -> Iterator[None]:
    """Several adapters in one model, and deleting the active one, are this design, not mistakes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        yield


def adapter_name(style: Style) -> str:
    """peft adapter names become ModuleDict keys: no dots. Slugs have no underscores, so this is unique."""
    assert style.sha256 is not None
    return f"style_{style.name.replace('-', '_')}_{style.sha256[:16]}"


class StyleAdapters:
    def __init__(self, pipe: HiDreamImagePipeline, max_loaded: int) -> None:
        self.pipe = pipe
        self.max_loaded = max_loaded
        self.model_modules = frozenset(name for name, _ in pipe.transformer.named_modules())
        self._loaded: OrderedDict[str, Style] = OrderedDict()  # least recently used first

    @property
    def loaded(self) -> dict[str, str]:
        """style name → sha256 of each adapter in the pipeline."""
        return {style.name: style.sha256 or "" for style in self._loaded.values()}

    def activate(self, style: Style | None, strength: float) -> None:
        """Make the next run use `style` at `strength` and nothing else; None or 0 runs the base model.
        Raise StyleRefused if the adapter cannot be used."""
        if style is None or strength == 0:
            if self._loaded:
                self.pipe.disable_lora()
            return
        name = self._ensure_loaded(style)
        self.pipe.enable_lora()
        self.pipe.set_adapters([name], [strength])

    def retain(self, styles: Iterable[Style]) -> None:
        """Unload the adapters of styles that were removed or whose weights changed."""
        keep = {adapter_name(style) for style in styles if style.sha256 is not None}
        for name in [name for name in self._loaded if name not in keep]:
            self._unload(name, "removed or changed")

    def _ensure_loaded(self, style: Style) -> str:
        name = adapter_name(style)
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return name
        assert style.weights_file is not None
        matched = check_modules(style, self.model_modules)
        if len(matched) < len(style.modules):
            log.warning(
                "style %s: %d of the adapter's %d modules are not in the transformer and are ignored",
                style.name,
                len(style.modules) - len(matched),
                len(style.modules),
            )
        while len(self._loaded) >= self.max_loaded:
            self._unload(next(iter(self._loaded)), "least recently used")
        try:
            with _expected_peft_warnings():
                self.pipe.load_lora_weights(
                    str(style.weights_file.parent),
                    weight_name=style.weights_file.name,
                    adapter_name=name,
                    use_safetensors=True,
                )
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # diffusers/peft refuse it (shapes for another model, a broken file)
            raise StyleRefused(style.source, f"diffusers could not load the adapter ({exc})") from exc
        if name not in self.pipe.get_list_adapters().get("transformer", []):
            raise StyleRefused(style.source, "diffusers loaded nothing from the adapter into the transformer")
        self._loaded[name] = style
        log.info("style %s: adapter loaded (%d modules)", style.name, len(matched))
        return name

    def _unload(self, name: str, why: str) -> None:
        style = self._loaded.pop(name)
        with _expected_peft_warnings():
            self.pipe.delete_adapters([name])
        log.info("style %s: adapter unloaded (%s)", style.name, why)
