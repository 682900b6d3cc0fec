"""One Settings object, read from the environment (prefix NOISETT_) and the names the deployment guide
already uses (MODEL_CACHE_DIR, AZURE_*, APPLICATIONINSIGHTS_CONNECTION_STRING)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from platformdirs import user_data_dir
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Variant = Literal["auto", "full", "dev", "fast"]
Offload = Literal["none", "model", "sequential"]
Quantize = Literal["none", "nf4", "int8", "fp8"]

ImageSharing = Literal["owner", "tenant"]
# A list read from a comma-separated variable (or a JSON array): NoDecode keeps pydantic-settings from
# insisting on JSON before the validator below sees the text.
CommaList = Annotated[list[str], NoDecode]

DEMO_MODEL = "demo"
DEMO_VERSION = 2  # bump when the demo pipeline's recipe changes: the cache then builds it anew
BLOB_MODEL_SCHEME = "blob://"


def demo_model_folder(cache_dir: Path) -> Path:
    """Where the tiny demo pipeline is written once (in a model cache) and loaded from."""
    return cache_dir / f"noisett-demo-v{DEMO_VERSION}"


def env_name(field: str) -> str:
    """The environment variable a Settings field is read from (the first of its names)."""
    alias = Settings.model_fields[field].validation_alias
    return str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"NOISETT_{field.upper()}"


def _env(name: str) -> AliasChoices:
    """Accept both NOISETT_NAME and the seed's bare NAME."""
    return AliasChoices(f"NOISETT_{name}", name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NOISETT_", extra="ignore", populate_by_name=True)

    # --- model ---
    model: str = Field(
        "HiDream-ai/HiDream-I1-Fast",
        description="Hub id or local folder of a HiDream-I1 pipeline, or `demo` for the tiny offline model.",
    )
    llama_model: str = Field(
        "meta-llama/Llama-3.1-8B-Instruct",
        description="Hub id or folder of the Llama text encoder (text_encoder_4), when the model lacks one.",
    )
    variant: Variant = Field(
        "auto", description="Step and guidance defaults; `auto` infers from the model id."
    )
    model_cache_dir: Path | None = Field(
        None,
        validation_alias=_env("MODEL_CACHE_DIR"),
        description="Hugging Face cache folder for weights (a mounted volume in Azure).",
    )
    device: str = Field("auto", description="`auto`, `cuda`, `cuda:N` or `cpu`.")
    offload: Offload = Field("none", description="CPU offload: `model` or `sequential` trade speed for VRAM.")
    quantize: Quantize = Field(
        "none",
        description="Quantize transformer and Llama: `nf4` or `int8` (bitsandbytes); or `fp8`: torchao "
        "float8 with dynamic per-row scales on the transformer's linear layers, compiled, for GPUs of "
        "compute capability 8.9 or newer (Ada, Hopper, Blackwell; the `fp8` extra).",
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile each transformer block at load (warm-up included), never on a user's "
        "image; `auto` compiles on CUDA and not on CPU. `fp8` always compiles.",
    )
    compile_cache_dir: Path | None = Field(
        None,
        description="Inductor's cache folder (TORCHINDUCTOR_CACHE_DIR), on a volume that persists, so that a "
        "restart compiles in seconds; default: torch's own (in /tmp).",
    )
    preload: bool = Field(True, description="Load the model in the background after start.")
    idle_unload_seconds: float | None = Field(
        None,
        ge=0,
        description="Free the model (and its GPU memory) after this many seconds without a job; the next "
        "job loads it again. Unset: off on a server (HTTP, worker), 600 over stdio; 0: never.",
    )
    batch: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Render a request's images in one pipeline call (`on`) or one after another (`off`); "
        "`auto` batches on CPU, where it measured faster, and not on CUDA until GPU figures show a gain.",
    )

    # --- generation queue ---
    wait_seconds: float = Field(
        50.0, ge=0, description="How long generate_image waits before returning handles."
    )
    max_queue: int = Field(8, ge=1, description="Jobs that may wait for the GPU; more get a busy error.")
    max_queue_per_user: int = Field(
        4,
        ge=1,
        description="Jobs one caller may have waiting (over stdio or without auth, everyone is one caller); "
        "more get a busy error naming this limit. The line takes turns between callers.",
    )
    cancel_roles: CommaList = Field(
        default_factory=list,
        description="App roles whose holders may cancel the jobs of anyone in their own tenant with "
        "cancel_image (operators); everyone else may cancel only their own.",
    )
    cancel_roles_scope: Literal["tenant", "all"] = Field(
        "tenant",
        description="Whose jobs a NOISETT_CANCEL_ROLES holder may cancel: those of their own `tenant`, or "
        "`all` tenants the server accepts (NOISETT_AUTH_TENANTS).",
    )
    heartbeat_seconds: float = Field(
        10.0,
        gt=0,
        description="How often a process rewrites the records of its unfinished jobs, so that other "
        "replicas see it is alive.",
    )
    heartbeat_timeout_seconds: float = Field(
        45.0,
        gt=0,
        description="A queued or running image whose records have not been rewritten for this long is "
        "reported failed (its process died), and its record is rewritten to say so.",
    )
    queue: Literal["local", "azure"] = Field(
        "local",
        description="`local`: one process renders. `azure`: `serve` is a front that queues jobs on an Azure "
        "Storage queue for `noisett-mcp worker` processes (needs the storage settings).",
    )
    queue_name: str = Field("generation-jobs", description="The Azure Storage queue of generation jobs.")
    queue_account_url: str | None = Field(
        None,
        description="Queue endpoint, e.g. `https://ACCOUNT.queue.core.windows.net`; default: from "
        "NOISETT_BLOB_ACCOUNT_URL (or the connection string).",
    )
    queue_visibility_seconds: int = Field(
        60,
        ge=5,
        le=3600,
        description="How long a worker's claim on a job lasts unless renewed (it renews every third of "
        "it); a dead worker's job reappears for another worker after this.",
    )
    max_attempts: int = Field(
        3, ge=1, description="Deliveries of one job before it is marked failed instead of retried."
    )
    worker_health_port: int | None = Field(
        8001, ge=0, le=65535, description="Port of `noisett-mcp worker`'s /healthz and /health."
    )

    # --- storage ---
    data_dir: Path = Field(
        default_factory=lambda: Path(user_data_dir("noisett-mcp", appauthor=False)),
        description="Local folder for images (and the styles folder by default).",
    )
    styles_dir: Path | None = Field(
        None, description="Folder of style manifests; default `<data_dir>/loras`."
    )
    max_loaded_styles: int = Field(
        8, ge=1, description="Style adapters kept loaded; past it the least recently used one is unloaded."
    )
    retention_days: float = Field(
        30.0, ge=0, description="Delete stored images older than this many days; 0 keeps them forever."
    )

    # --- Azure Blob Storage (used when either the connection string or the account URL is set) ---
    azure_storage_connection_string: SecretStr | None = Field(
        None,
        validation_alias=_env("AZURE_STORAGE_CONNECTION_STRING"),
        description="Storage account connection string (account key): Blob storage, service SAS links.",
    )
    blob_account_url: str | None = Field(
        None,
        description="Blob endpoint, e.g. `https://ACCOUNT.blob.core.windows.net`, reached with "
        "DefaultAzureCredential (a managed identity from AZURE_CLIENT_ID): user delegation SAS links.",
    )
    blob_images_container: str = Field("generated-images", description="Container for images and records.")
    blob_styles_container: str = Field(
        "loras", description="Container of styles, mirrored to the styles folder."
    )
    storage_deadline_seconds: float = Field(
        5.0,
        gt=0,
        le=120,
        description="The longest a request waits on Blob storage; past it writes go to the spool (uploaded "
        "later), reads fail fast, and /health says `reachable: false`.",
    )
    sas_minutes: float = Field(
        15.0, gt=0, le=7 * 24 * 60, description="Lifetime of the read-only SAS links to full images."
    )
    styles_sync_seconds: float = Field(
        60.0, gt=0, description="How often the styles container is checked (by ETag) for changed styles."
    )

    # --- HTTP ---
    host: str = Field("127.0.0.1", description="HTTP bind address.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port.")
    allowed_hosts: CommaList = Field(
        default_factory=list, description="Extra Host headers accepted (DNS-rebinding protection)."
    )
    cors_origins: CommaList = Field(default_factory=list, description="Browser origins allowed by CORS.")
    http_max_connections: int = Field(
        512,
        ge=1,
        description="Open HTTP connections at most; past it a new one gets 503 and is closed at once, "
        "before the process runs out of file descriptors. A quarter is kept for connections that have sent "
        "a whole request head.",
    )
    http_header_timeout: float = Field(
        10.0, gt=0, description="Seconds a client has to send a whole request head before it is closed."
    )
    http_keep_alive_seconds: int = Field(
        5, ge=1, description="Seconds an idle keep-alive connection stays open between requests."
    )
    http_shutdown_seconds: int = Field(
        25,
        ge=0,
        description="On SIGTERM, seconds to let open requests finish before closing them (Container Apps "
        "kills a replica 30 s after SIGTERM).",
    )
    public_url: str | None = Field(
        None,
        description="The origin clients reach, e.g. `https://noisett.example.com`: the RFC 9728 `resource` "
        "and the 401 challenge use it instead of the request's Host and X-Forwarded-Proto.",
    )

    # --- auth: Microsoft Entra ID on the HTTP endpoint (on when both ids are set) ---
    azure_ad_tenant_id: str | None = Field(
        None,
        validation_alias=_env("AZURE_AD_TENANT_ID"),
        description="Directory (tenant) id whose users may call the HTTP endpoint.",
    )
    azure_ad_client_id: str | None = Field(
        None,
        validation_alias=_env("AZURE_AD_CLIENT_ID"),
        description="Application (client) id of the app registration that exposes `access_as_user`.",
    )
    auth_audiences: CommaList = Field(
        default_factory=list, description="Audiences accepted besides `{client id}` and `api://{client id}`."
    )
    auth_tenants: CommaList = Field(
        default_factory=list, description="More tenant ids whose users are accepted (multi-tenant apps)."
    )
    auth_allowed_roles: CommaList = Field(
        default_factory=list,
        description="App roles that stand in for the `access_as_user` scope (app-only callers).",
    )
    auth_required_roles: CommaList = Field(
        default_factory=list, description="When set, a caller needs at least one of these app roles."
    )
    auth_required_groups: CommaList = Field(
        default_factory=list, description="When set, a caller must be in one of these groups (object ids)."
    )
    auth_jwks_url: str | None = Field(
        None, description="Where the token signing keys are; default: derived from the authority and tenant."
    )
    auth_authority: str = Field(
        "https://login.microsoftonline.com",
        description="Entra sign-in host; change it for sovereign clouds.",
    )
    auth_jwks_cooldown: float = Field(
        30.0, ge=0, description="Seconds between key refetches forced by tokens with an unknown key id."
    )
    image_sharing: ImageSharing = Field(
        "owner", description="Who may fetch an image by id: its `owner`, or anyone in its `tenant`."
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="`json`: one JSON object per log line (trace ids included), for log search."
    )
    applicationinsights_connection_string: SecretStr | None = Field(
        None,
        validation_alias=_env("APPLICATIONINSIGHTS_CONNECTION_STRING"),
        description="Send traces, metrics and logs to Application Insights (the `azure-monitor` extra).",
    )
    gpu_sample_seconds: float = Field(
        5.0,
        ge=1,
        le=60,
        description="Seconds between samples of GPU utilization and memory (NVML, the `gpu` extra) for "
        "telemetry.",
    )

    @field_validator(
        "allowed_hosts",
        "cors_origins",
        "auth_audiences",
        "auth_tenants",
        "auth_allowed_roles",
        "auth_required_roles",
        "auth_required_groups",
        "cancel_roles",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("public_url")
    @classmethod
    def _origin(cls, value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        parsed = urlsplit(value.strip())
        if parsed.scheme not in ("https", "http") or not parsed.hostname or parsed.path not in ("", "/"):
            raise ValueError(
                "NOISETT_PUBLIC_URL must be an origin like https://noisett.example.com (a scheme and a "
                f"host, no path), not {value!r}"
            )
        if parsed.query or parsed.fragment or parsed.username or parsed.password:
            raise ValueError(f"NOISETT_PUBLIC_URL must have no query, fragment or user info: {value!r}")
        return f"{parsed.scheme}://{parsed.netloc.lower()}"

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError("allowed: auto, cpu, cuda or cuda:N (a GPU index)")
        return value

    @field_validator("blob_images_container", "blob_styles_container", "queue_name")
    @classmethod
    def _storage_name(cls, value: str) -> str:
        # Blob containers and Storage queues share one naming rule.
        if not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", value):
            raise ValueError(
                f"{value!r} is not a Blob container or queue name: 3 to 63 lowercase letters, digits and "
                "single hyphens, starting and ending with a letter or digit"
            )
        return value

    @property
    def is_demo(self) -> bool:
        return self.model == DEMO_MODEL

    @property
    def blob_enabled(self) -> bool:
        """Azure Blob is the store when a connection string or an account URL is set."""
        return bool(self.azure_storage_connection_string or self.blob_account_url)

    @property
    def blob_model(self) -> bool:
        """NOISETT_MODEL names a prefix in Blob storage: `blob://CONTAINER/PREFIX`."""
        return self.model.startswith(BLOB_MODEL_SCHEME)

    @property
    def resolved_queue_account_url(self) -> str:
        if self.queue_account_url:
            return self.queue_account_url
        if self.blob_account_url:
            return self.blob_account_url.replace(".blob.", ".queue.", 1)
        raise ValueError("NOISETT_QUEUE=azure needs NOISETT_QUEUE_ACCOUNT_URL or NOISETT_BLOB_ACCOUNT_URL")

    @property
    def auth_enabled(self) -> bool:
        """Entra auth guards the HTTP endpoint when both ids are set."""
        return bool(self.azure_ad_tenant_id and self.azure_ad_client_id)

    @property
    def resolved_variant(self) -> Literal["full", "dev", "fast"]:
        if self.variant != "auto":
            return self.variant
        name = self.model.lower()
        for variant in ("fast", "dev", "full"):
            if variant in name:
                return variant
        return "full" if not self.is_demo else "fast"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def resolved_styles_dir(self) -> Path:
        return self.styles_dir or self.data_dir / "loras"

    @property
    def resolved_model_cache_dir(self) -> Path:
        return self.model_cache_dir or self.data_dir / "models"

    @property
    def demo_model_dir(self) -> Path:
        return demo_model_folder(self.resolved_model_cache_dir)

    @property
    def spool_dir(self) -> Path:
        """Images and records waiting for Blob storage: they stay here until an upload is verified."""
        return self.data_dir / "spool"
