// The event subscription that delivers the hub's connection events to connmon's ConnectionEvent
// function. Deployed into the system topic's resource group. Create it only after the code is published:
// Event Grid checks the endpoint when the subscription is created, and the function exists only once
// the package with ConnectionEvent/function.json is deployed.

@description('Name of the existing system topic (eventgrid-topic.bicep), in this module\'s resource group.')
param systemTopicName string

@description('Name of the event subscription (3-64 letters and digits).')
@minLength(3)
@maxLength(64)
param name string = 'connmon'

@description('Resource ID of the Function App.')
param functionAppId string

@description('Resource ID of the storage account that holds the dead-letter container.')
param deadLetterStorageAccountId string

@description('Name of the dead-letter container.')
param deadLetterContainerName string

@description('Delivery attempts before an event is dead-lettered (1-30).')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@description('Minutes an event is retried before it is dead-lettered (1-1440).')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

resource eventSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: systemTopic
  name: name
  properties: {
    // Azure Functions destination: the function's resource ID; batching properties as in the Bicep
    // reference (AzureFunctionEventSubscriptionDestination). One event per delivery: if any invocation of
    // a batch fails, the host answers 500 and Event Grid redelivers the whole batch, so a batch of one
    // keeps a failing event from dragging others along.
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionAppId}/functions/ConnectionEvent'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    // The three event types connmon acts on (README "What connmon does with each event"); it would
    // acknowledge and ignore others, but there is no reason to pay for their delivery.
    filter: {
      includedEventTypes: [
        'Microsoft.Devices.DeviceConnected'
        'Microsoft.Devices.DeviceDisconnected'
        'Microsoft.Devices.DeviceDeleted'
      ]
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    // Undeliverable events go to a blob container, written with the topic's own identity (it holds
    // Storage Blob Data Contributor on that container, roles.bicep), so the account needs no shared key.
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterStorageAccountId
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}

output name string = eventSubscription.name
