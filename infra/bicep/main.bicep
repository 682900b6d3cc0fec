// Noisett MCP on Azure Container Apps with a GPU workload profile, scaling to zero.
//
// Deploys: Log Analytics and Application Insights, with alert rules on the key metrics; a Basic container registry (admin user off); a storage
// account for images and styles (Entra ID only); an Azure Files share for the model cache; a user-assigned
// identity with AcrPull and Storage Blob Data Contributor; a Container Apps environment with a GPU profile;
// and the apps (when `containerImage` is set: the first run creates the registry the image goes to).
//
// `layout` picks the apps:
// - single: one app on the GPU profile serves MCP and renders; it scales to zero on HTTP requests.
// - split: an always-on CPU front (Consumption profile) serves MCP and queues jobs on an Azure Storage queue;
//   GPU workers (`noisett-mcp worker`, no ingress) scale from zero on the queue's length. Adds the queue and
//   Storage Queue Data Contributor for the identity.
//
//   az deployment group create -g <rg> -p infra/bicep/main.bicepparam      (see docs/deploy.md)

targetScope = 'resourceGroup'

@description('Azure region: one with serverless GPUs for the chosen profile (see docs/deploy.md).')
param location string = resourceGroup().location

@description('Prefix of every resource name, and the app name: lowercase letters, digits and hyphens.')
@minLength(3)
@maxLength(20)
param namePrefix string = 'noisett'

@description('''GPU workload profile. Consumption-GPU-NC24-A100 (A100 80 GB) runs the bf16 pipeline as is;
Consumption-GPU-NC8as-T4 (T4 16 GB) needs NF4 quantization and sequential offload, and is slow;
NC24-A100 is the dedicated (per-node) A100 profile.''')
@allowed([
  'Consumption-GPU-NC8as-T4'
  'Consumption-GPU-NC24-A100'
  'NC24-A100'
])
param gpuProfile string = 'Consumption-GPU-NC24-A100'

@description('Image to run, e.g. <registry>.azurecr.io/noisett-mcp:<git sha>. Empty: deploy everything but the app.')
param containerImage string = ''

@description('''single: one GPU app serves MCP and renders (cheapest when idle; the first request after scale to
zero waits for a GPU cold start). split: an always-on CPU front and GPU workers that scale on a queue.''')
@allowed([
  'single'
  'split'
])
param layout string = 'single'

@description('NOISETT_MODEL: a Hugging Face id, or blob://models/<prefix> for weights in the storage account.')
param model string = 'HiDream-ai/HiDream-I1-Fast'

@description('NOISETT_QUANTIZE; auto: nf4 on a T4, none on an A100.')
@allowed([
  'auto'
  'none'
  'nf4'
  'int8'
])
param quantize string = 'auto'

@description('NOISETT_OFFLOAD; auto: sequential on a T4, none on an A100.')
@allowed([
  'auto'
  'none'
  'model'
  'sequential'
])
param offload string = 'auto'

@description('GPU replicas kept while idle (the app, or the workers when split). 0: no GPU is billed while idle.')
@minValue(0)
@maxValue(10)
param minReplicas int = 0

@description('Most GPU replicas (the app, or the workers when split), each with its own GPU (mind the GPU quota).')
@minValue(1)
@maxValue(10)
param maxReplicas int = 1

@description('Concurrent requests per replica of the single GPU app before another one is started.')
@minValue(1)
@maxValue(100)
param concurrentRequests int = 4

@description('''Split: jobs on the queue (waiting or running) per worker before another worker starts (KEDA's
azure-queue target). The first job always starts a worker. A new worker takes minutes to start and a warm A100
renders in seconds, so a small backlog is cleared sooner by the warm one; use 1 on a T4.''')
@minValue(1)
@maxValue(100)
param queueLength int = 4

@description('Split: the Azure Storage queue between the front and the workers (NOISETT_QUEUE_NAME).')
@minLength(3)
@maxLength(63)
param queueName string = 'generation-jobs'

@description('''Jobs in the queue before callers get a busy error (NOISETT_MAX_QUEUE). Split: it counts the running
jobs too; keep it at least queueLength × maxReplicas, or the last workers never start.''')
@minValue(1)
param maxQueue int = 8

@description('Split: front replicas kept at all times (1 or more: MCP is answered at once).')
@minValue(1)
@maxValue(10)
param frontMinReplicas int = 1

@description('Split: most front replicas.')
@minValue(1)
@maxValue(10)
param frontMaxReplicas int = 3

@description('Split: concurrent requests per front replica before another starts (a waiting call costs little).')
@minValue(1)
@maxValue(1000)
param frontConcurrentRequests int = 50

@description('Split: vCPUs of a front replica (Consumption profile; 0.5 vCPU goes with 1Gi).')
param frontCpu string = '0.5'

@description('Split: memory of a front replica (Consumption: 2 GiB per vCPU).')
param frontMemory string = '1Gi'

@description('Split: port of the worker\'s /healthz (NOISETT_WORKER_HEALTH_PORT), checked by its probes.')
@minValue(1)
@maxValue(65535)
param workerHealthPort int = 8001

@description('vCPUs for the app; empty: the whole GPU profile\'s share.')
param cpu string = ''

@description('Memory for the app, e.g. \'220Gi\'; empty: the whole GPU profile\'s share.')
param memory string = ''

@description('Entra tenant whose users may call the endpoint (AZURE_AD_TENANT_ID).')
param entraTenantId string = tenant().tenantId

@description('Application (client) id of the app registration that exposes access_as_user (AZURE_AD_CLIENT_ID). See the README, "Microsoft Entra ID".')
@minLength(36)
@maxLength(36)
param entraClientId string

@description('Browser origins allowed by CORS (NOISETT_CORS_ORIGINS and ingress CORS).')
param corsOrigins array = []

@description('Hugging Face token, for the gated Llama-3.1 text encoder. Stored as an app secret.')
@secure()
param hfToken string = ''

@description('Object ids of people or groups who may upload styles and weights (Storage Blob Data Contributor).')
param operatorPrincipalIds array = []

@description('''Mount an Azure Files share at MODEL_CACHE_DIR. Off by default: the replicas stream the weights from
the models container (NOISETT_MODEL=blob://models/<prefix>) with no share; on for a hub model id, whose
download the share keeps.''')
param mountModelCache bool = false

@description('Model-cache share tier: Standard (pay for what is stored) or Premium (provisioned, faster reads).')
@allowed([
  'Standard'
  'Premium'
])
param modelCacheTier string = 'Standard'

@description('Model-cache share size in GiB.')
@minValue(100)
param modelCacheQuotaGiB int = 256

@description('Days after which generated images are deleted from Blob storage.')
@minValue(1)
param imageRetentionDays int = 30

@description('Days Log Analytics and Application Insights keep data.')
@minValue(30)
param logRetentionDays int = 30

@description('E-mail addresses that get the alerts (docs/deploy.md, "Metrics and alerts"); empty: nothing is sent.')
param alertEmails array = []

@description('Alert when images take longer than this many seconds on average over 15 minutes (the guide: 90).')
@minValue(1)
param latencyAlertSeconds int = 90

@description('Alert when more than this percent of generation requests fail over 15 minutes (the guide: 10).')
@minValue(1)
@maxValue(100)
param errorRateAlertPercent int = 10

@description('Generation requests a 15-minute window needs before the error-rate alert judges it.')
@minValue(1)
param errorRateAlertMinimumRequests int = 5

@description('Alert when GPU utilization averages more than this percent over 15 minutes (the guide: 90, sustained).')
@minValue(1)
@maxValue(100)
param gpuUtilizationAlertPercent int = 90

@description('Alert when a replica takes longer than this many seconds from its start to ready (the guide: 120).')
@minValue(1)
param coldStartAlertSeconds int = 120

param tags object = {
  application: 'noisett-mcp'
}

var token = uniqueString(resourceGroup().id, namePrefix)
var compactPrefix = take(toLower(replace(namePrefix, '-', '')), 8)
var names = {
  workspace: '${namePrefix}-logs'
  appInsights: '${namePrefix}-appinsights'
  identity: '${namePrefix}-identity'
  registry: '${compactPrefix}acr${token}'
  storage: '${compactPrefix}img${take(token, 13)}'
  modelCache: '${compactPrefix}mdl${take(token, 13)}'
  environment: '${namePrefix}-env'
  app: namePrefix // the endpoint: the GPU app, or the front when split
  worker: '${namePrefix}-worker'
}
var split = layout == 'split'
var deployApps = !empty(containerImage)

// Each GPU profile's whole share for one replica. A dedicated node keeps some back for the platform.
var profileResources = {
  'Consumption-GPU-NC8as-T4': { cpu: '8', memory: '56Gi' }
  'Consumption-GPU-NC24-A100': { cpu: '24', memory: '220Gi' }
  'NC24-A100': { cpu: '22', memory: '200Gi' }
}
var isT4 = gpuProfile == 'Consumption-GPU-NC8as-T4'
var gpuCpu = empty(cpu) ? profileResources[gpuProfile].cpu : cpu
var gpuMemory = empty(memory) ? profileResources[gpuProfile].memory : memory
var modelCacheMountPath = '/mnt/model-cache'

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    workspaceName: names.workspace
    appInsightsName: names.appInsights
    retentionInDays: logRetentionDays
    tags: tags
  }
}

// The guide's four key metrics, alerted on; e-mailed to alertEmails once someone is named.
module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    location: location
    namePrefix: namePrefix
    appInsightsName: monitoring.outputs.appInsightsName
    alertEmails: alertEmails
    latencyAlertSeconds: latencyAlertSeconds
    errorRateAlertPercent: errorRateAlertPercent
    errorRateAlertMinimumRequests: errorRateAlertMinimumRequests
    gpuUtilizationAlertPercent: gpuUtilizationAlertPercent
    coldStartAlertSeconds: coldStartAlertSeconds
    tags: tags
  }
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    location: location
    name: names.identity
    tags: tags
  }
}

module registry 'modules/registry.bicep' = {
  name: 'registry'
  params: {
    location: location
    name: names.registry
    pullPrincipalId: identity.outputs.principalId
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    name: names.storage
    appPrincipalId: identity.outputs.principalId
    operatorPrincipalIds: operatorPrincipalIds
    imageRetentionDays: imageRetentionDays
    tags: tags
  }
}

module queue 'modules/queue.bicep' = if (split) {
  name: 'queue'
  params: {
    storageAccountName: storage.outputs.name
    queueName: queueName
    principalId: identity.outputs.principalId
  }
}

module modelCache 'modules/modelCache.bicep' = if (mountModelCache) {
  name: 'model-cache'
  params: {
    location: location
    name: names.modelCache
    tier: modelCacheTier
    quotaGiB: modelCacheQuotaGiB
    tags: tags
  }
}

module environment 'modules/environment.bicep' = {
  name: 'environment'
  params: {
    location: location
    name: names.environment
    workspaceName: monitoring.outputs.workspaceName
    gpuProfileType: gpuProfile
    gpuMaxNodes: maxReplicas
    modelCacheAccountName: mountModelCache ? modelCache!.outputs.accountName : ''
    modelCacheShareName: mountModelCache ? modelCache!.outputs.shareName : ''
    tags: tags
  }
}

// Read here, straight into an app secret: the connection string never appears in a deployment output.
resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: names.appInsights
}

// Environment variables, in groups: every app; the one that renders; the one behind the ingress; the queue.
// The front gets NOISETT_MODEL too: step defaults and the styles it lists depend on the model.
var commonEnv = [
  { name: 'NOISETT_MODEL', value: model }
  { name: 'AZURE_CLIENT_ID', value: identity.outputs.clientId }
  { name: 'NOISETT_BLOB_ACCOUNT_URL', value: storage.outputs.blobEndpoint }
  { name: 'NOISETT_LOG_FORMAT', value: 'json' }
]
var gpuEnv = concat(
  [
    { name: 'NOISETT_QUANTIZE', value: quantize == 'auto' ? (isT4 ? 'nf4' : 'none') : quantize }
    { name: 'NOISETT_OFFLOAD', value: offload == 'auto' ? (isT4 ? 'sequential' : 'none') : offload }
  ],
  // Inductor's cache beside the weights: a replica that starts from zero compiles from it in seconds.
  mountModelCache
    ? [
        { name: 'MODEL_CACHE_DIR', value: modelCacheMountPath }
        { name: 'NOISETT_COMPILE_CACHE_DIR', value: '${modelCacheMountPath}/inductor' }
      ]
    : []
)
var endpointEnv = [
  { name: 'AZURE_AD_TENANT_ID', value: entraTenantId }
  { name: 'AZURE_AD_CLIENT_ID', value: entraClientId }
  // DNS-rebinding protection accepts only this Host header (besides loopback).
  { name: 'NOISETT_ALLOWED_HOSTS', value: '${names.app}.${environment.outputs.defaultDomain}' }
  // The RFC 9728 `resource` and the 401 challenge name this origin, never a Host header a client sent.
  { name: 'NOISETT_PUBLIC_URL', value: 'https://${names.app}.${environment.outputs.defaultDomain}' }
  { name: 'NOISETT_CORS_ORIGINS', value: join(corsOrigins, ',') }
  { name: 'NOISETT_MAX_QUEUE', value: string(maxQueue) }
  { name: 'OTEL_SERVICE_NAME', value: names.app }
]
var queueEnv = [
  { name: 'NOISETT_QUEUE', value: 'azure' }
  { name: 'NOISETT_QUEUE_NAME', value: queueName }
  { name: 'NOISETT_QUEUE_ACCOUNT_URL', value: storage.outputs.queueEndpoint }
]
var appEnv = concat(commonEnv, gpuEnv, endpointEnv)
var frontEnv = concat(commonEnv, endpointEnv, queueEnv)
var workerEnv = concat(commonEnv, gpuEnv, queueEnv, [
  // Probes reach the worker's health port from outside the container.
  { name: 'NOISETT_HOST', value: '0.0.0.0' }
  { name: 'NOISETT_WORKER_HEALTH_PORT', value: string(workerHealthPort) }
  { name: 'OTEL_SERVICE_NAME', value: names.worker }
])

var telemetrySecrets = { 'appinsights-connection-string': appInsights.properties.ConnectionString }
var telemetrySecretEnv = [
  { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', secretRef: 'appinsights-connection-string' }
]
// The app that loads the model may need the hub token; the front never does.
var appSecrets = union(telemetrySecrets, empty(hfToken) ? {} : { 'hf-token': hfToken })
var appSecretEnv = concat(telemetrySecretEnv, empty(hfToken) ? [] : [{ name: 'HF_TOKEN', secretRef: 'hf-token' }])

// KEDA's azure-queue scaler, signed in as the app identity: the account allows no key.
var queueScaleRule = {
  name: 'queue-length'
  azureQueue: {
    accountName: storage.outputs.name
    queueName: queueName
    queueLength: queueLength
    identity: identity.outputs.id
  }
}

// Single: the MCP endpoint on the GPU profile, scaling on concurrent requests.
module app 'modules/containerApp.bicep' = if (deployApps && !split) {
  name: 'app'
  params: {
    location: location
    name: names.app
    environmentId: environment.outputs.id
    workloadProfileName: environment.outputs.gpuProfileName
    identityId: identity.outputs.id
    registryServer: registry.outputs.loginServer
    image: containerImage
    cpu: gpuCpu
    memory: gpuMemory
    env: appEnv
    secrets: appSecrets
    secretEnv: appSecretEnv
    corsOrigins: corsOrigins
    minReplicas: minReplicas
    maxReplicas: maxReplicas
    concurrentRequests: concurrentRequests
    volumeStorageName: environment.outputs.modelCacheStorageName
    volumeMountPath: modelCacheMountPath
    tags: tags
  }
  dependsOn: [
    monitoring // the connection string above is read from its Application Insights
  ]
}

// Split: the MCP endpoint on the Consumption profile, always on. It imports no torch and needs no GPU or
// model cache. Single revision mode: an old revision would keep its warm replica, and front and workers
// must run the same release (the job message is theirs alone); a rollback redeploys an older image.
module front 'modules/containerApp.bicep' = if (deployApps && split) {
  name: 'front'
  params: {
    location: location
    name: names.app
    environmentId: environment.outputs.id
    workloadProfileName: environment.outputs.consumptionProfileName
    identityId: identity.outputs.id
    registryServer: registry.outputs.loginServer
    image: containerImage
    cpu: frontCpu
    memory: frontMemory
    env: frontEnv
    secrets: telemetrySecrets
    secretEnv: telemetrySecretEnv
    corsOrigins: corsOrigins
    minReplicas: frontMinReplicas
    maxReplicas: frontMaxReplicas
    concurrentRequests: frontConcurrentRequests
    revisionsMode: 'Single'
    tags: tags
  }
  dependsOn: [
    monitoring // the connection string above is read from its Application Insights
    queue // and its identity may use the queue
  ]
}

// Split: GPU workers with no ingress, from 0 to maxReplicas on the queue's length. Single revision mode: an
// old revision would also scale on the queue and take jobs.
module worker 'modules/containerApp.bicep' = if (deployApps && split) {
  name: 'worker'
  params: {
    location: location
    name: names.worker
    environmentId: environment.outputs.id
    workloadProfileName: environment.outputs.gpuProfileName
    identityId: identity.outputs.id
    registryServer: registry.outputs.loginServer
    image: containerImage
    cpu: gpuCpu
    memory: gpuMemory
    command: [
      'noisett-mcp'
      'worker'
    ]
    env: workerEnv
    secrets: appSecrets
    secretEnv: appSecretEnv
    ingressEnabled: false
    healthPort: workerHealthPort
    minReplicas: minReplicas
    maxReplicas: maxReplicas
    extraScaleRules: [
      queueScaleRule
    ]
    revisionsMode: 'Single'
    // Let a worker finish its job on scale-in (Container Apps' maximum): a stop mid-job costs an attempt.
    terminationGracePeriodSeconds: 600
    volumeStorageName: environment.outputs.modelCacheStorageName
    volumeMountPath: modelCacheMountPath
    tags: tags
  }
  dependsOn: [
    monitoring
    queue
  ]
}

// The app with the ingress: the GPU app, or the front.
var endpointFqdn = !deployApps ? '' : (split ? front!.outputs.fqdn : app!.outputs.fqdn)
var endpoint = empty(endpointFqdn) ? '' : 'https://${endpointFqdn}'
var revision = !deployApps ? '' : (split ? front!.outputs.latestRevisionName : app!.outputs.latestRevisionName)

@description('The MCP app\'s base URL (the front when split).')
output endpoint string = endpoint

@description('The MCP endpoint to give clients.')
output mcpUrl string = empty(endpoint) ? '' : '${endpoint}/mcp'

@description('The health check.')
output healthUrl string = empty(endpoint) ? '' : '${endpoint}/healthz'

@description('The revision now serving, for rollback.')
output latestRevision string = revision

output layout string = layout

@description('The app with the MCP endpoint (the front when split).')
output appName string = names.app

@description('The GPU workers\' app; empty in the single layout.')
output workerName string = split ? names.worker : ''

@description('The job queue; empty in the single layout.')
output queueName string = split ? queueName : ''

output environmentName string = environment.outputs.name
output registryName string = registry.outputs.name
output registryLoginServer string = registry.outputs.loginServer
output storageAccountName string = storage.outputs.name
output blobEndpoint string = storage.outputs.blobEndpoint
output identityClientId string = identity.outputs.clientId
output appInsightsName string = monitoring.outputs.appInsightsName
