// The user-assigned identity the app runs as: it pulls the image (AcrPull) and reads and writes blobs
// (Storage Blob Data Contributor). No registry password, no storage key.

@description('Azure region.')
param location string

@description('Identity name.')
param name string

param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
