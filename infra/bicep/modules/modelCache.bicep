// The Azure Files share the model cache lives on (MODEL_CACHE_DIR), so a replica that starts from zero
// reads the weights from the share instead of downloading them again. It is a separate account because
// Container Apps mounts SMB shares with the account key, and the images account has keys switched off.

@description('Azure region.')
param location string

@description('Storage account name: 3 to 24 lowercase letters and digits, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Share name.')
param shareName string = 'model-cache'

@description('Share size in GiB. The full HiDream-I1 pipeline with Llama-3.1-8B is about 60 GiB per variant.')
@minValue(100)
@maxValue(102400)
param quotaGiB int = 256

@description('Standard (pay for what is stored) or Premium (provisioned; faster cold starts).')
@allowed([
  'Standard'
  'Premium'
])
param tier string = 'Standard'

param tags object = {}

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: tier == 'Premium' ? 'FileStorage' : 'StorageV2'
  sku: {
    name: '${tier}_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    // SMB mounts in Container Apps authenticate with the account key: it must stay on here.
    allowSharedKeyAccess: true
    largeFileSharesState: tier == 'Standard' ? 'Enabled' : null
  }
}

resource files 'Microsoft.Storage/storageAccounts/fileServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource share 'Microsoft.Storage/storageAccounts/fileServices/shares@2023-05-01' = {
  parent: files
  name: shareName
  properties: {
    shareQuota: quotaGiB
    enabledProtocols: 'SMB'
  }
}

output accountName string = account.name
output shareName string = share.name
