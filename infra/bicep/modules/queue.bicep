// The job queue of the split layout: the MCP front puts generation jobs on it, and the GPU workers take them
// and are scaled on its length. The app identity gets Storage Queue Data Contributor on the account: the
// front sends and reads, the workers receive, renew and delete, and the KEDA scale rule reads the length.

@description('Storage account (the images account) that holds the queue.')
param storageAccountName string

@description('Queue name (NOISETT_QUEUE_NAME): 3 to 63 lowercase letters, digits and hyphens.')
@minLength(3)
@maxLength(63)
param queueName string

@description('Principal (object) id of the app identity.')
param principalId string

// Built-in role: Storage Queue Data Contributor (read, add, update and delete messages; create the queue).
var queueDataContributorRoleId = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource queue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: queueName
}

resource queueAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, queueDataContributorRoleId)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', queueDataContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

output name string = queue.name
