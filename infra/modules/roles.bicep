// Role assignments for the managed identities, in the resource group of the storage account:
//   - the Function App's system-assigned identity on the storage account and Application Insights;
//   - the Event Grid system topic's system-assigned identity on the dead-letter container.
// Built-in role definition IDs are the same in every tenant; these are the ones Microsoft's Flex
// Consumption samples use (Azure-Samples/azure-functions-flex-consumption-samples IaC/bicep/rbac.bicep,
// azure-quickstart-templates function-app-flex-managed-identities/main.bicep).

@description('The app\'s storage account.')
param storageAccountName string

@description('The dead-letter container in that account.')
param deadLetterContainerName string

@description('The Application Insights component the app writes to.')
param applicationInsightsName string

@description('Principal ID of the Function App\'s system-assigned identity.')
param appPrincipalId string

@description('Principal ID of the Event Grid system topic\'s system-assigned identity.')
param eventGridPrincipalId string

var roleIds = {
  // AzureWebJobsStorage with an identity: "The Storage Blob Data Owner role provides the minimum storage
  // account permissions for the host-required AzureWebJobsStorage connection"; the timer trigger takes
  // its singleton lock with blobs; Flex Consumption reads its deployment package with it.
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  // connmon's table (CONNMON_STORE=table: create table, read and write entities) and the host's
  // diagnostic events ("You must also add the Storage Table Data Contributor role").
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  // Event Grid writing dead-lettered events to Blob storage with its identity ("Add managed identity to
  // a role on Azure Event Grid destination": Azure Blob storage -> Storage Blob Data Contributor).
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  // APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD ("Configure connections to remote
  // services in Azure Functions": Monitoring Metrics Publisher).
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}
// Queues are not granted: neither the timer nor the Event Grid trigger uses them (the bindings table of
// the same article lists host-required queue access only for the Blob trigger).

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
  resource blobServices 'blobServices' existing = {
    name: 'default'
    resource deadLetterContainer 'containers' existing = {
      name: deadLetterContainerName
    }
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource appBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roleIds.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataOwner)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appTableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roleIds.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageTableDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, appPrincipalId, roleIds.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.monitoringMetricsPublisher)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Scoped to the one container: the topic's identity can write dead letters and nothing else.
resource eventGridDeadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage::blobServices::deadLetterContainer.id, eventGridPrincipalId, roleIds.storageBlobDataContributor)
  scope: storage::blobServices::deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataContributor)
    principalId: eventGridPrincipalId
    principalType: 'ServicePrincipal'
  }
}
