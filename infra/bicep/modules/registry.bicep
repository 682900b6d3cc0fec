// Azure Container Registry, Basic, with the admin user off: images are pulled with the app's identity
// (AcrPull) and pushed by CI through its federated credential (AcrPush, granted in the runbook).

@description('Azure region.')
param location string

@description('Registry name: 5 to 50 letters and digits, globally unique.')
@minLength(5)
@maxLength(50)
param name string

@description('Principal (object) id of the identity that pulls images.')
param pullPrincipalId string

param tags object = {}

// Built-in role: AcrPull.
var acrPullRoleId = '7f951dda-4ed3-4680-a7ca-43fe172d538d'

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Basic'
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    publicNetworkAccess: 'Enabled'
  }
}

resource pull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, pullPrincipalId, acrPullRoleId)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPullRoleId)
    principalId: pullPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output name string = registry.name
output id string = registry.id
output loginServer string = registry.properties.loginServer
