"""The LoRA adapters of one loaded pipeline: each style's adapter is loaded once (under a name that
includes its weights' sha256, so changed weights load fresh) and a run switches to it with
`set_adapters`, which costs about a millisecond. The base style runs with LoRA disabled.

With compiled blocks (engine/fast.py) each such state of the adapters would be a graph of its own, compiled
on a user's first image of a style. So a compiled engine opens one adapter slot before it compiles: a
zero LoRA of rank SLOT_RANK on the attention projections (LORA_TARGETS), which every style is copied into
in place (its own scaling and the request's strength folded into B, the rest of the rank zero). The
graphs compiled at load then serve every style and the base (all zeros, exactly the base image). We copy
ourselves rather than use diffusers' `hotswap=True`, which needs every style's LoRA config to match the
first one's and deletes the adapter when a swap fails. A style the slot cannot hold (a higher rank,
other modules, DoRA, per-module alphas) loads as its own adapter, as without compile, and its first image
compiles.

Only the generation worker calls this, between runs: nothing here is thread-safe on its own.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from diffusers import HiDreamImagePipeline

from noisett_mcp.engine.demo import LORA_TARGETS
from noisett_mcp.errors import StyleRefused
from noisett_mcp.styles.manifest import Style, check_modules

log = logging.getLogger(__name__)

SLOT = "noisett_slot"
# The slot's rank: styles up to it switch without compiling. HiDream LoRAs are mostly trained at 16 to 64
# (`styles train` defaults to 16); the padding costs a rank-64 LoRA on the attention projections.
SLOT_RANK = 64


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
        self._slot: dict[str, Any] | None = None  # module name → its peft LoRA layer
        self._slot_holds: tuple[str, float] | None = None  # (sha256, strength) copied in; None: zeros
        self._slot_active = True  # False while a style outside the slot runs
        self._unfit: dict[str, str] = {}  # sha256 → why the slot cannot hold it

    def open_slot(self) -> int:
        """Add the zero adapter slot (before the blocks compile); return the modules it adapts."""
        transformer = self.pipe.transformer
        zeros: dict[str, torch.Tensor] = {}
        for name, module in transformer.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS:
                weight = module.weight
                shape_a, shape_b = (SLOT_RANK, module.in_features), (module.out_features, SLOT_RANK)
                zeros[f"transformer.{name}.lora_A.weight"] = weight.new_zeros(shape_a)
                zeros[f"transformer.{name}.lora_B.weight"] = weight.new_zeros(shape_b)
        with _expected_peft_warnings():
            self.pipe.load_lora_weights(zeros, adapter_name=SLOT)  # rank = alpha: scaling 1
        self._slot = {
            name: module
            for name, module in transformer.named_modules()
            if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict) and SLOT in module.lora_A
        }
        return len(self._slot)

    @property
    def loaded(self) -> dict[str, str]:
        """style name → sha256 of each adapter in the pipeline."""
        return {style.name: style.sha256 or "" for style in self._loaded.values()}

    def activate(self, style: Style | None, strength: float) -> None:
        """Make the next run use `style` at `strength` and nothing else; None or 0 runs the base model.
        Raise StyleRefused if the adapter cannot be used."""
        if self._slot is not None and (style is None or strength == 0 or self._fits_slot(style)):
            self._fill_slot(style if strength else None, strength)
            return
        if style is None or strength == 0:
            if self._loaded:
                self.pipe.disable_lora()
            return
        name = self._ensure_loaded(style)
        self.pipe.enable_lora()
        self.pipe.set_adapters([name], [strength])
        self._slot_active = False

    # --- the compiled engine's slot ---
    def _fits_slot(self, style: Style) -> bool:
        assert self._slot is not None and style.sha256 is not None
        if style.sha256 not in self._unfit:
            self._unfit[style.sha256] = _slot_misfit(style, frozenset(self._slot))
            if self._unfit[style.sha256]:
                log.warning(
                    "style %s runs as its own adapter, and its first image compiles: %s",
                    style.name,
                    self._unfit[style.sha256],
                )
        return not self._unfit[style.sha256]

    def _fill_slot(self, style: Style | None, strength: float) -> None:
        """Copy `style` at `strength` into the slot (None: zeros), unless it holds that already."""
        assert self._slot is not None
        if not self._slot_active:  # back from a style outside the slot
            self.pipe.enable_lora()
            self.pipe.set_adapters([SLOT], [1.0])
            self._slot_active = True
        wanted = (style.sha256 or "", strength) if style is not None else None
        if wanted == self._slot_holds:
            return
        factors = _slot_factors(style, strength) if style is not None else {}
        with torch.no_grad():
            for name, layer in self._slot.items():
                down, up = layer.lora_A[SLOT].weight, layer.lora_B[SLOT].weight
                down.zero_()
                up.zero_()
                if name in factors:
                    a, b = factors[name]
                    down[: a.shape[0]].copy_(a)
                    up[:, : b.shape[1]].copy_(b)
        self._slot_holds = wanted

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


def _read_lora(style: Style) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """The adapter's tensors in diffusers' format (other trainers' keys converted) and its peft config."""
    assert style.weights_file is not None
    state, metadata = HiDreamImagePipeline.lora_state_dict(
        str(style.weights_file.parent), weight_name=style.weights_file.name, return_lora_metadata=True
    )
    config = {key.removeprefix("transformer."): value for key, value in (metadata or {}).items()}
    return state, config


def _slot_misfit(style: Style, slot_modules: frozenset[str]) -> str:
    """Why the slot cannot hold `style` ("" if it can)."""
    try:
        state, config = _read_lora(style)
    except Exception as exc:  # loading it as its own adapter refuses it with diffusers' reason
        return f"its file could not be read ({exc})"
    if config.get("use_dora") or config.get("alpha_pattern") or config.get("rank_pattern"):
        return "it uses DoRA or per-module ranks or alphas"
    for key, tensor in state.items():
        module, _, kind = key.removeprefix("transformer.").rpartition(".lora_")
        if kind not in ("A.weight", "B.weight"):
            return f"it has tensors other than LoRA weights ({key})"
        if module not in slot_modules:
            return f"it adapts {module}, outside the attention projections"
        if kind == "A.weight" and tensor.shape[0] > SLOT_RANK:
            return f"its rank {tensor.shape[0]} is above {SLOT_RANK}"
    return ""


def _slot_factors(style: Style, strength: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module → (A, B × its scaling × strength), so that the slot's scaling of 1 gives the style's delta."""
    state, config = _read_lora(style)
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, down in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
        up = state[key.replace(".lora_A.", ".lora_B.")]
        rank = down.shape[0]
        alpha = float(config.get("lora_alpha", rank))  # type: ignore[arg-type]
        scaling = alpha / rank**0.5 if config.get("use_rslora") else alpha / rank
        factors[module] = (down, up * (scaling * strength))
    return factors
