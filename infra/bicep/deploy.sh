#!/usr/bin/env bash
# One-command deploy of Noisett MCP to Azure Container Apps (docs/deploy.md).
#
#   export AZURE_AD_CLIENT_ID=<app registration client id>     # README, "Microsoft Entra ID"
#   infra/bicep/deploy.sh [resource-group] [location]
#
# 1. deploys the infrastructure (registry, storage, identity, monitoring, GPU environment);
# 2. builds the image in the registry with ACR Tasks (no local Docker or GPU needed), tagged with the commit;
# 3. deploys the app on that image and waits for /healthz.
# Optional environment: NOISETT_LAYOUT (single, the default: one GPU app; split: an always-on CPU front and GPU
# workers on a queue, docs/deploy.md), NOISETT_GPU_PROFILE, NOISETT_MODEL, NOISETT_QUANTIZE and
# NOISETT_OFFLOAD (auto: chosen for the GPU profile), NOISETT_MAX_REPLICAS (GPUs), NOISETT_QUEUE_LENGTH,
# NOISETT_MAX_QUEUE, NOISETT_CORS_ORIGINS, HF_TOKEN, NOISETT_NAME_PREFIX (see infra/bicep/main.bicepparam).
# Alerts (docs/deploy.md, "Metrics and alerts"): NOISETT_ALERT_EMAILS (comma-separated; empty: nothing is sent),
# NOISETT_ALERT_LATENCY_SECONDS (90), NOISETT_ALERT_ERROR_RATE_PERCENT (10), NOISETT_ALERT_GPU_PERCENT (90),
# NOISETT_ALERT_COLD_START_SECONDS (120).
set -euo pipefail

group="${1:-${NOISETT_RESOURCE_GROUP:-noisett}}"
location="${2:-${NOISETT_LOCATION:-swedencentral}}"
export NOISETT_LAYOUT="${NOISETT_LAYOUT:-single}"
case "$NOISETT_LAYOUT" in
  single | split) ;;
  *) echo "NOISETT_LAYOUT must be single or split, not '$NOISETT_LAYOUT'" >&2; exit 2 ;;
esac
# Checked here, before anything is deployed (Bicep's @allowed would only refuse them in Azure).
export NOISETT_QUANTIZE="${NOISETT_QUANTIZE:-auto}" NOISETT_OFFLOAD="${NOISETT_OFFLOAD:-auto}"
case "$NOISETT_QUANTIZE" in
  auto | none | nf4 | int8) ;;
  *) echo "NOISETT_QUANTIZE must be auto, none, nf4 or int8, not '$NOISETT_QUANTIZE'" >&2; exit 2 ;;
esac
case "$NOISETT_OFFLOAD" in
  auto | none | model | sequential) ;;
  *) echo "NOISETT_OFFLOAD must be auto, none, model or sequential, not '$NOISETT_OFFLOAD'" >&2; exit 2 ;;
esac
for variable in NOISETT_ALERT_LATENCY_SECONDS NOISETT_ALERT_ERROR_RATE_PERCENT NOISETT_ALERT_GPU_PERCENT \
  NOISETT_ALERT_COLD_START_SECONDS; do
  value="${!variable:-}"
  if [ -n "$value" ] && ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
    echo "$variable must be a whole number of 1 or more, not '$value'" >&2
    exit 2
  fi
done
IFS=',' read -ra alert_emails <<<"${NOISETT_ALERT_EMAILS:-}"
for email in "${alert_emails[@]}"; do
  case "$email" in
    '' | ?*@?*.?*) ;;
    *) echo "NOISETT_ALERT_EMAILS: '$email' is not an e-mail address" >&2; exit 2 ;;
  esac
done
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
params="$here/main.bicepparam"
: "${AZURE_AD_CLIENT_ID:?set AZURE_AD_CLIENT_ID to the client id of the Entra app registration, see README: Microsoft Entra ID}"

# The signed-in user may upload styles (Storage Blob Data Contributor), unless others are named.
if [ -z "${NOISETT_OPERATOR_IDS:-}" ]; then
  NOISETT_OPERATOR_IDS="$(az ad signed-in-user show --query id -o tsv 2>/dev/null || true)"
  export NOISETT_OPERATOR_IDS
fi
tag="$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || date -u +%Y%m%d%H%M%S)"
if [ -n "$(git -C "$root" status --porcelain 2>/dev/null)" ]; then
  tag="$tag-dirty-$(date -u +%H%M%S)"
fi

echo "==> resource group $group in $location, layout $NOISETT_LAYOUT (quantize $NOISETT_QUANTIZE, offload $NOISETT_OFFLOAD)"
az group create --name "$group" --location "$location" --output none

echo "==> 1/3 infrastructure"
registry="$(NOISETT_IMAGE='' az deployment group create --resource-group "$group" --name noisett-infra \
  --parameters "$params" --query properties.outputs.registryLoginServer.value --output tsv)"

echo "==> 2/3 image $registry/noisett-mcp:$tag (ACR Tasks)"
az acr build --registry "${registry%%.*}" --image "noisett-mcp:$tag" --timeout 7200 "$root"

echo "==> 3/3 app"
export NOISETT_IMAGE="$registry/noisett-mcp:$tag"
az deployment group create --resource-group "$group" --name noisett-app --parameters "$params" --output none
output() {
  az deployment group show --resource-group "$group" --name noisett-app \
    --query "properties.outputs.$1.value" --output tsv
}
health="$(output healthUrl)"
mcp="$(output mcpUrl)"
revision="$(output latestRevision)"
worker="$(output workerName)"

if [ -n "$worker" ]; then
  echo "==> waiting for $health (the CPU front; GPU workers start when a job is queued)"
else
  echo "==> waiting for $health (a GPU replica starting from zero takes minutes)"
fi
for attempt in $(seq 1 60); do
  if body="$(curl --silent --show-error --fail --max-time 30 "$health")"; then
    echo "healthy: $body"
    break
  fi
  [ "$attempt" = 60 ] && { echo "no healthy answer after 30 minutes: see docs/deploy.md, Logs" >&2; exit 1; }
  sleep 30
done

echo
echo "MCP endpoint: $mcp"
echo "revision:     $revision   (rollback: docs/deploy.md, Roll back)"
if [ -n "$worker" ]; then
  echo "GPU workers:  $worker, 0 to ${NOISETT_MAX_REPLICAS:-1} replicas on queue $(output queueName)"
  echo "              (queue_depth and oldest_job_age_seconds on $health)"
fi
