// Example parameters. Values come from the environment, so the same file serves a person at a shell and
// the deploy workflow; nothing secret is written here.
//   export AZURE_AD_CLIENT_ID=<app registration client id>   # required: README, "Microsoft Entra ID"
//   az deployment group create -g <rg> -p infra/bicep/main.bicepparam
using './main.bicep'

param namePrefix = readEnvironmentVariable('NOISETT_NAME_PREFIX', 'noisett')

// Consumption-GPU-NC24-A100 | Consumption-GPU-NC8as-T4 | NC24-A100
param gpuProfile = readEnvironmentVariable('NOISETT_GPU_PROFILE', 'Consumption-GPU-NC24-A100')

// Empty on the first run (the registry does not exist yet); then <registry>.azurecr.io/noisett-mcp:<sha>.
param containerImage = readEnvironmentVariable('NOISETT_IMAGE', '')

// single (one GPU app) | split (an always-on CPU front and GPU workers on a queue): docs/deploy.md, "Choose a layout"
param layout = readEnvironmentVariable('NOISETT_LAYOUT', 'single')

// Split: queued jobs per GPU worker before another worker starts.
param queueLength = int(readEnvironmentVariable('NOISETT_QUEUE_LENGTH', '4'))

// Jobs queued (split: and running) before callers are told to retry; split: at least queueLength × maxReplicas.
param maxQueue = int(readEnvironmentVariable('NOISETT_MAX_QUEUE', '8'))

param model = readEnvironmentVariable('NOISETT_MODEL', 'HiDream-ai/HiDream-I1-Fast')

// auto (nf4 on a T4, none on an A100) | none | nf4 | int8: docs/deploy.md, "Which GPU fits which model"
param quantize = readEnvironmentVariable('NOISETT_QUANTIZE', 'auto')

// auto (sequential on a T4, none on an A100) | none | model | sequential
param offload = readEnvironmentVariable('NOISETT_OFFLOAD', 'auto')

param entraClientId = readEnvironmentVariable('AZURE_AD_CLIENT_ID')

param minReplicas = int(readEnvironmentVariable('NOISETT_MIN_REPLICAS', '0'))

param maxReplicas = int(readEnvironmentVariable('NOISETT_MAX_REPLICAS', '1'))

// Comma-separated, e.g. https://app.example.com
param corsOrigins = filter(split(readEnvironmentVariable('NOISETT_CORS_ORIGINS', ''), ','), origin => !empty(origin))

// Optional: needed for the gated Llama-3.1 text encoder when NOISETT_MODEL is a Hugging Face id.
param hfToken = readEnvironmentVariable('HF_TOKEN', '')

// Alerts (docs/deploy.md, "Metrics and alerts"). Comma-separated e-mail addresses; empty: nothing is sent.
param alertEmails = filter(split(readEnvironmentVariable('NOISETT_ALERT_EMAILS', ''), ','), email => !empty(email))

// Thresholds, whole numbers: the deployment guide's defaults.
param latencyAlertSeconds = int(readEnvironmentVariable('NOISETT_ALERT_LATENCY_SECONDS', '90'))

param errorRateAlertPercent = int(readEnvironmentVariable('NOISETT_ALERT_ERROR_RATE_PERCENT', '10'))

param gpuUtilizationAlertPercent = int(readEnvironmentVariable('NOISETT_ALERT_GPU_PERCENT', '90'))

param coldStartAlertSeconds = int(readEnvironmentVariable('NOISETT_ALERT_COLD_START_SECONDS', '120'))

// Comma-separated object ids of style uploaders (deploy.sh adds the signed-in user).
param operatorPrincipalIds = filter(split(readEnvironmentVariable('NOISETT_OPERATOR_IDS', ''), ','), id => !empty(id))
