// The Function App's own storage account (`AzureWebJobsStorage`): the host's blob leases (the timer is a
// singleton across instances), connmon's table (CONNMON_STORE=table, CONNMON_TABLE_NAME), the Flex
// Consumption deployment container, and the Event Grid dead-letter container.

@description('Globally unique storage account name: 3-24 lowercase letters and digits.')
@minLength(3)
@maxLength(24)
param name string

@description('Region of the account.')
param location string

@description('Allow account-key (shared key) authorisation. Only the Elastic Premium plan needs it: its content share on Azure Files is reached with a key-based connection string (WEBSITE_CONTENTAZUREFILECONNECTIONSTRING); everything else here uses Microsoft Entra ID.')
param allowSharedKeyAccess bool = false

@description('Create the blob container the Flex Consumption plan deploys packages to.')
param createDeploymentContainer bool = false

@description('Name of the Flex Consumption deployment container.')
param deploymentContainerName string = 'app-package'

@description('Name of the container Event Grid writes undeliverable events to.')
param deadLetterContainerName string = 'eventgrid-deadletter'

@description('Tags for the account.')
param tags object = {}

// General-purpose v2, as "Automate resource deployment for your function app in Azure Functions"
// (Create storage account) requires: blobs, queues and tables in one account.
resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: allowSharedKeyAccess
    // The portal and the CLI default to Entra ID for data access.
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobServices 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

// "Deployments to an app running in the Flex Consumption plan require a container in Azure Blob
// Storage as the deployment source ... This deployment account must already be configured when you
// create your app" ("Automate resource deployment ...", Deployment container).
resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = if (createDeploymentContainer) {
  parent: blobServices
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobServices
  name: deadLetterContainerName
  properties: {
    publicAccess: 'None'
  }
}

output name string = storage.name
output id string = storage.id
// `primaryEndpoints.blob` ends with a slash: https://<name>.blob.core.windows.net/
output deploymentContainerUrl string = '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
output deadLetterContainerName string = deadLetterContainer.name
