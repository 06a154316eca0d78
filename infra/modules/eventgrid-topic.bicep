// The Event Grid system topic of the existing IoT hub. Deployed into the hub's resource group (the
// module's scope), in the hub's region. "Only one Azure Event Grid system topic is allowed per source"
// ("System topics in Azure Event Grid"): when the hub already has one, pass its name (it must be in the
// hub's resource group); deploying this module then updates that topic (same source and type) and turns
// on its system-assigned identity, which identity-based dead-lettering needs.

@description('Name of the system topic.')
param name string

@description('Name of the existing IoT hub, in this module\'s resource group.')
param iotHubName string

@description('Tags for the topic.')
param tags object = {}

resource iotHub 'Microsoft.Devices/IotHubs@2023-06-30' existing = {
  name: iotHubName
}

// Shape: Microsoft.EventGrid/systemTopics (Bicep resource reference); topicType for IoT Hub as public
// IoT hub templates spell it: 'Microsoft.Devices.IoTHubs' (compared case-insensitively). The identity
// is what deadLetterWithResourceIdentity uses ("Uses the managed identity setup on the parent resource
// ... to acquire the authentication tokens being used during delivery / dead-lettering").
resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: name
  location: iotHub.location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: iotHub.id
    topicType: 'Microsoft.Devices.IoTHubs'
  }
}

output name string = systemTopic.name
output principalId string = systemTopic.identity.principalId
