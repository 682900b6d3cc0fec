// Noisett MCP on Azure Container Apps with a GPU workload profile, scaling to zero.
//
// Deploys: Log Analytics and Application Insights; a Basic container registry (admin user off); a storage
// account for images and styles (Entra ID only); an Azure Files share for the model cache; a user-assigned
// identity with AcrPull and Storage Blob Data Contributor; a Container Apps environment with a GPU profile;
// and the app itself (when `containerImage` is set: the first run creates the registry the image goes to).
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

@description('Replicas kept while idle. 0 scales to zero: no GPU is billed while idle, and the first request waits for a cold start.')
@minValue(0)
@maxValue(10)
param minReplicas int = 0

@description('Most replicas, each with its own GPU (mind the subscription\'s GPU quota).')
@minValue(1)
@maxValue(10)
param maxReplicas int = 1

@description('Concurrent requests per replica before another one is started.')
@minValue(1)
@maxValue(100)
param concurrentRequests int = 4

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

@description('Mount an Azure Files share at MODEL_CACHE_DIR (false: weights baked into the image).')
param mountModelCache bool = true

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
  app: namePrefix
}

// Each GPU profile's whole share for one replica. A dedicated node keeps some back for the platform.
var profileResources = {
  'Consumption-GPU-NC8as-T4': { cpu: '8', memory: '56Gi' }
  'Consumption-GPU-NC24-A100': { cpu: '24', memory: '220Gi' }
  'NC24-A100': { cpu: '22', memory: '200Gi' }
}
var isT4 = gpuProfile == 'Consumption-GPU-NC8as-T4'
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

var appEnv = concat(
  [
    { name: 'NOISETT_MODEL', value: model }
    { name: 'NOISETT_QUANTIZE', value: quantize == 'auto' ? (isT4 ? 'nf4' : 'none') : quantize }
    { name: 'NOISETT_OFFLOAD', value: offload == 'auto' ? (isT4 ? 'sequential' : 'none') : offload }
    { name: 'AZURE_CLIENT_ID', value: identity.outputs.clientId }
    { name: 'NOISETT_BLOB_ACCOUNT_URL', value: storage.outputs.blobEndpoint }
    { name: 'AZURE_AD_TENANT_ID', value: entraTenantId }
    { name: 'AZURE_AD_CLIENT_ID', value: entraClientId }
    // DNS-rebinding protection accepts only this Host header (besides loopback).
    { name: 'NOISETT_ALLOWED_HOSTS', value: '${names.app}.${environment.outputs.defaultDomain}' }
    { name: 'NOISETT_CORS_ORIGINS', value: join(corsOrigins, ',') }
    { name: 'NOISETT_LOG_FORMAT', value: 'json' }
    { name: 'OTEL_SERVICE_NAME', value: names.app }
  ],
  mountModelCache ? [{ name: 'MODEL_CACHE_DIR', value: modelCacheMountPath }] : []
)
var appSecrets = union(
  { 'appinsights-connection-string': appInsights.properties.ConnectionString },
  empty(hfToken) ? {} : { 'hf-token': hfToken }
)
var appSecretEnv = concat(
  [{ name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', secretRef: 'appinsights-connection-string' }],
  empty(hfToken) ? [] : [{ name: 'HF_TOKEN', secretRef: 'hf-token' }]
)

// The MCP endpoint on the GPU profile. Issue 8's two-app layout adds a CPU front (workloadProfileName
// 'Consumption') and turns this into queue-scaled workers: two calls of the same module.
module app 'modules/containerApp.bicep' = if (!empty(containerImage)) {
  name: 'app'
  params: {
    location: location
    name: names.app
    environmentId: environment.outputs.id
    workloadProfileName: environment.outputs.gpuProfileName
    identityId: identity.outputs.id
    registryServer: registry.outputs.loginServer
    image: containerImage
    cpu: empty(cpu) ? profileResources[gpuProfile].cpu : cpu
    memory: empty(memory) ? profileResources[gpuProfile].memory : memory
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

var endpoint = empty(containerImage) ? '' : 'https://${app!.outputs.fqdn}'

@description('The app\'s base URL.')
output endpoint string = endpoint

@description('The MCP endpoint to give clients.')
output mcpUrl string = empty(endpoint) ? '' : '${endpoint}/mcp'

@description('The health check.')
output healthUrl string = empty(endpoint) ? '' : '${endpoint}/healthz'

@description('The revision now serving, for rollback.')
output latestRevision string = empty(containerImage) ? '' : app!.outputs.latestRevisionName

output appName string = names.app
output environmentName string = environment.outputs.name
output registryName string = registry.outputs.name
output registryLoginServer string = registry.outputs.loginServer
output storageAccountName string = storage.outputs.name
output blobEndpoint string = storage.outputs.blobEndpoint
output identityClientId string = identity.outputs.clientId
output appInsightsName string = monitoring.outputs.appInsightsName
