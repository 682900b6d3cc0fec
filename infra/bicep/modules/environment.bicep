// The Container Apps environment: workload profiles with the default Consumption profile (the CPU front of
// the split layout) and one GPU profile, console logs to Log Analytics, and the model-cache share linked for
// mounting.

@description('Azure region.')
param location string

@description('Environment name.')
param name string

@description('Log Analytics workspace that receives the console and system logs.')
param workspaceName string

@description('''GPU workload profile type. Serverless (per-second billing, scales to zero):
Consumption-GPU-NC8as-T4 (1x T4 16 GB) or Consumption-GPU-NC24-A100 (1x A100 80 GB).
Dedicated (per-node billing): NC24-A100; it can only be added when the environment is created.''')
@allowed([
  'Consumption-GPU-NC8as-T4'
  'Consumption-GPU-NC24-A100'
  'NC24-A100'
])
param gpuProfileType string

@description('Most nodes of a dedicated GPU profile (ignored by serverless GPU profiles).')
@minValue(1)
param gpuMaxNodes int = 1

@description('Storage account of the model-cache share; empty: no share is linked.')
param modelCacheAccountName string = ''

@description('Model-cache share name.')
param modelCacheShareName string = ''

param tags object = {}

var gpuProfileName = 'gpu'
var consumptionProfileName = 'Consumption'
var dedicated = !startsWith(gpuProfileType, 'Consumption-')
var modelCacheStorageName = 'model-cache'
// A dedicated profile is a pool of nodes, none while idle and at most gpuMaxNodes; a serverless one has no pool.
var gpuProfile = union(
  {
    name: gpuProfileName
    workloadProfileType: gpuProfileType
  },
  dedicated ? { minimumCount: 0, maximumCount: gpuMaxNodes } : {}
)

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
}

resource modelCacheAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = if (!empty(modelCacheAccountName)) {
  name: modelCacheAccountName
}

resource environment 'Microsoft.App/managedEnvironments@2025-01-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: workspace.properties.customerId
        sharedKey: workspace.listKeys().primarySharedKey
      }
    }
    workloadProfiles: [
      {
        name: consumptionProfileName
        workloadProfileType: 'Consumption'
      }
      gpuProfile
    ]
  }
}

resource modelCache 'Microsoft.App/managedEnvironments/storages@2025-01-01' = if (!empty(modelCacheAccountName)) {
  parent: environment
  name: modelCacheStorageName
  properties: {
    azureFile: {
      accountName: modelCacheAccountName
      accountKey: modelCacheAccount.listKeys().keys[0].value
      shareName: modelCacheShareName
      accessMode: 'ReadWrite'
    }
  }
}

output id string = environment.id
output name string = environment.name
output defaultDomain string = environment.properties.defaultDomain
output gpuProfileName string = gpuProfileName
output consumptionProfileName string = consumptionProfileName
output modelCacheStorageName string = empty(modelCacheAccountName) ? '' : modelCacheStorageName
