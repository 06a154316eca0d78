// connmon on Azure Functions (custom handler): the Function App with its plan, storage account and
// monitoring, the roles its managed identity needs, and the Event Grid system topic + subscription that
// feed it an existing IoT hub's connection events.
//
// Deploy into a resource group:
//   az deployment group create -g <rg> -f infra/main.bicep -p @infra/main.parameters.json
//
// Two passes. The event subscription targets the ConnectionEvent function, which exists only once the
// code is published, so the first pass (deploySubscription=false, the default) creates everything else;
// publish dist/connmon-functionapp.zip; then deploy again with deploySubscription=true (README
// "Deploying to Azure").
//
// The plan cannot be changed after the first deployment (an app cannot move between Flex Consumption
// and the other plans): to change it, deploy into a new resource group or with another namePrefix.

targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------------
// Where and how
// ---------------------------------------------------------------------------------------------------

@description('Region of the Function App, its plan, storage account and monitoring. Must offer the chosen plan (Flex Consumption: `az functionapp list-flexconsumption-runtimes --location <region> --runtime custom`). The Event Grid system topic always goes to the IoT hub\'s region.')
param location string = resourceGroup().location

@description('Prefix of every resource name: lowercase letters, digits and hyphens.')
@minLength(2)
@maxLength(11)
param namePrefix string = 'connmon'

@description('Hosting plan, all Linux: flex = Flex Consumption (recommended), premium = Elastic Premium EP1, dedicated = App Service plan of size dedicatedSku.')
@allowed([
  'flex'
  'premium'
  'dedicated'
])
param plan string = 'flex'

@description('App Service plan size when plan = dedicated. Basic and up support Always On, which the timer needs.')
@allowed([
  'B1'
  'B2'
  'B3'
  'S1'
  'S2'
  'S3'
  'P0v3'
  'P1v3'
  'P2v3'
  'P3v3'
])
param dedicatedSku string = 'B1'

@description('Flex Consumption: highest instance count (40 to 1000).')
@minValue(40)
@maxValue(1000)
param flexMaximumInstanceCount int = 40

@description('Flex Consumption: instance memory in MB.')
@allowed([
  512
  2048
  4096
])
param flexInstanceMemoryMB int = 2048

@description('Elastic Premium: highest instance count of the plan.')
@minValue(1)
@maxValue(100)
param premiumMaximumElasticWorkerCount int = 20

@description('Tags for every resource created.')
param tags object = {}

// ---------------------------------------------------------------------------------------------------
// The existing IoT hub: its name and resource group (and subscription), or its resource ID.
// ---------------------------------------------------------------------------------------------------

@description('Name of the existing IoT hub (unless iotHubResourceId is given).')
param iotHubName string = ''

@description('Resource group of the IoT hub (unless iotHubResourceId is given). Defaults to this deployment\'s resource group.')
param iotHubResourceGroup string = resourceGroup().name

@description('Subscription of the IoT hub (unless iotHubResourceId is given). Defaults to this deployment\'s subscription.')
param iotHubSubscriptionId string = subscription().subscriptionId

@description('Resource ID of the existing IoT hub: /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Devices/IotHubs/<name>. Overrides the three parameters above.')
param iotHubResourceId string = ''

@description('Name of the hub\'s Event Grid system topic, created in the hub\'s resource group. A hub has at most one: if it already has one there, give its name. Empty: <hub>-events.')
param eventGridSystemTopicName string = ''

@description('Create the Event Grid subscription to the ConnectionEvent function. Leave false until the code is published (the function must exist), then deploy again with true.')
param deploySubscription bool = false

@description('Name of the Event Grid subscription (3-64 letters and digits).')
param eventSubscriptionName string = 'connmon'

@description('Event Grid: delivery attempts before an event is dead-lettered (1-30).')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@description('Event Grid: minutes an event is retried before it is dead-lettered (1-1440).')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

// ---------------------------------------------------------------------------------------------------
// connmon's settings (README "Settings"), written as app settings of the same name. Defaults as in the
// README, except CONNMON_STORE: `table`, because every plan here can run several instances.
// CONNMON_LISTEN and CONNMON_SWEEP_INTERVAL are standalone-only (under Functions connmon listens where
// the host says and sweeps when the DisconnectTimer function fires), so they are not parameters.
// ---------------------------------------------------------------------------------------------------

@description('How long a device may stay disconnected before it alerts: 90s, 5m, 1h30m, 2d, 300, 00:05:00 ... at most 30 days.')
param CONNMON_GRACE_PERIOD string = '5m'

@description('http(s) URL that receives alert batches. Empty: alerts go to the log only. A secret (it carries the credential).')
@secure()
param CONNMON_ALERT_WEBHOOK_URL string = ''

@description('Microsoft Teams: the URL of a Workflows flow "When a Teams webhook request is received" (with its whole query string; sig= is the credential). Empty: no Teams messages. A secret.')
@secure()
param CONNMON_TEAMS_WEBHOOK_URL string = ''

@description('Slack: an incoming webhook URL (https://hooks.slack.com/services/...). Empty: no Slack messages. A secret.')
@secure()
param CONNMON_SLACK_WEBHOOK_URL string = ''

@description('PagerDuty: the Events API v2 integration (routing) key of a service, 32 letters and digits. Empty: no PagerDuty events. A secret.')
@secure()
param CONNMON_PAGERDUTY_ROUTING_KEY string = ''

@description('PagerDuty: the Events API v2 endpoint. Empty: https://events.pagerduty.com/v2/enqueue (use https://events.eu.pagerduty.com/v2/enqueue for an EU account).')
param CONNMON_PAGERDUTY_EVENTS_URL string = ''

@description('Identities of one hub alerting in one batch from which Teams, Slack and PagerDuty get one outage summary instead of one message each (2 or more). The generic webhook gets every alert plus the summary.')
param CONNMON_GROUP_THRESHOLD string = '20'

@description('How long one delivery attempt retries a transient failure quickly (1 s, 2 s, 4 s, then every 8 s) before the durable back-off; 0s to 40s.')
param CONNMON_QUICK_RETRY_FOR string = '30s'

@description('Only these identities are watched: comma-separated globs over device or device/module ids (e.g. pump-*,*/$edgeHub). Empty: all.')
param CONNMON_INCLUDE string = ''

@description('These identities are never watched: comma-separated globs over device or device/module ids. Empty: none.')
param CONNMON_EXCLUDE string = ''

@description('Grace periods per identity: comma-separated glob=duration items, the first match wins (e.g. pump-*=15m,*/$edgeAgent=1h). Empty: CONNMON_GRACE_PERIOD for all.')
param CONNMON_GRACE_OVERRIDES string = ''

@description('Silences: comma-separated glob@until items, until in RFC 3339 (e.g. site-7-*@2026-12-01T06:00:00Z). Empty: none.')
param CONNMON_SILENCES string = ''

@description('Silent reconnects (outages shorter than the grace period) within CONNMON_FLAP_WINDOW that raise a flapping alert, 2 to 64.')
param CONNMON_FLAP_THRESHOLD string = '5'

@description('The window in which silent reconnects are counted for flapping: 30m, 1h ... between 1m and 7d.')
param CONNMON_FLAP_WINDOW string = '30m'

@description('Repeat the alert of a device that stays offline this often (e.g. 4h). Empty: no reminders.')
param CONNMON_REMIND_EVERY string = ''

@description('Dead-man switch: alert once when no event at all arrives from a hub for this long (e.g. 30m; between 10s and 7d), and once when events return. Empty: off.')
param CONNMON_HUB_QUIET_AFTER string = ''

@description('table = Azure Table Storage, shared by every instance (use it on Azure); sqlite = one embedded file, a single instance only, and it needs a writable CONNMON_SQLITE_PATH (the app folder is read-only when run from the package).')
@allowed([
  'sqlite'
  'table'
])
param CONNMON_STORE string = 'table'

@description('With table: the table (3-63 letters and digits, starting with a letter), created if missing, in the app\'s own storage account unless CONNMON_TABLE_CONNECTION names another.')
@minLength(3)
@maxLength(63)
param CONNMON_TABLE_NAME string = 'connmon'

@description('With table: a storage connection string for another account (AccountName=...;AccountKey=...). Empty: the app\'s own account through its managed identity (AzureWebJobsStorage__*). A secret.')
@secure()
param CONNMON_TABLE_CONNECTION string = ''

@description('With sqlite: the SQLite file, relative to the app folder (read-only when run from a package) or absolute, e.g. /home/data/connmon.db on Premium or Dedicated.')
param CONNMON_SQLITE_PATH string = 'connmon.db'

// ---------------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------------

var prefix = toLower(namePrefix)
var token = uniqueString(resourceGroup().id, prefix)
var appName = '${prefix}-${token}'
var planName = '${prefix}-plan-${token}'
var storageAccountName = take('st${replace(prefix, '-', '')}${token}', 24)
var logAnalyticsName = '${prefix}-log-${token}'
var applicationInsightsName = '${prefix}-appi-${token}'

// The hub's coordinates from whichever form was given: both become one resource ID, split on '/':
// ['', 'subscriptions', <sub>, 'resourceGroups', <rg>, 'providers', 'Microsoft.Devices', 'IotHubs', <name>]
var hubId = empty(iotHubResourceId) ? '/subscriptions/${iotHubSubscriptionId}/resourceGroups/${iotHubResourceGroup}/providers/Microsoft.Devices/IotHubs/${iotHubName}' : iotHubResourceId
var hubIdParts = split(hubId, '/')
var hubSubscriptionId = hubIdParts[2]
var hubResourceGroup = hubIdParts[4]
var hubName = hubIdParts[8]
var systemTopicName = empty(eventGridSystemTopicName) ? '${hubName}-events' : eventGridSystemTopicName

// ---------------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------------

module monitoring 'modules/monitoring.bicep' = {
  name: 'connmon-monitoring'
  params: {
    location: location
    logAnalyticsName: logAnalyticsName
    applicationInsightsName: applicationInsightsName
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'connmon-storage'
  params: {
    name: storageAccountName
    location: location
    // Only the Premium plan's Azure Files content share needs the account key.
    allowSharedKeyAccess: plan == 'premium'
    createDeploymentContainer: plan == 'flex'
    tags: tags
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'connmon-functionapp'
  params: {
    plan: plan
    location: location
    planName: planName
    appName: appName
    dedicatedSku: dedicatedSku
    flexMaximumInstanceCount: flexMaximumInstanceCount
    flexInstanceMemoryMB: flexInstanceMemoryMB
    premiumMaximumElasticWorkerCount: premiumMaximumElasticWorkerCount
    storageAccountName: storage.outputs.name
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    tags: tags
    CONNMON_GRACE_PERIOD: CONNMON_GRACE_PERIOD
    CONNMON_ALERT_WEBHOOK_URL: CONNMON_ALERT_WEBHOOK_URL
    CONNMON_STORE: CONNMON_STORE
    CONNMON_TABLE_NAME: CONNMON_TABLE_NAME
    CONNMON_TABLE_CONNECTION: CONNMON_TABLE_CONNECTION
    CONNMON_SQLITE_PATH: CONNMON_SQLITE_PATH
    CONNMON_TEAMS_WEBHOOK_URL: CONNMON_TEAMS_WEBHOOK_URL
    CONNMON_SLACK_WEBHOOK_URL: CONNMON_SLACK_WEBHOOK_URL
    CONNMON_PAGERDUTY_ROUTING_KEY: CONNMON_PAGERDUTY_ROUTING_KEY
    CONNMON_PAGERDUTY_EVENTS_URL: CONNMON_PAGERDUTY_EVENTS_URL
    CONNMON_GROUP_THRESHOLD: CONNMON_GROUP_THRESHOLD
    CONNMON_QUICK_RETRY_FOR: CONNMON_QUICK_RETRY_FOR
    CONNMON_INCLUDE: CONNMON_INCLUDE
    CONNMON_EXCLUDE: CONNMON_EXCLUDE
    CONNMON_GRACE_OVERRIDES: CONNMON_GRACE_OVERRIDES
    CONNMON_SILENCES: CONNMON_SILENCES
    CONNMON_FLAP_THRESHOLD: CONNMON_FLAP_THRESHOLD
    CONNMON_FLAP_WINDOW: CONNMON_FLAP_WINDOW
    CONNMON_REMIND_EVERY: CONNMON_REMIND_EVERY
    CONNMON_HUB_QUIET_AFTER: CONNMON_HUB_QUIET_AFTER
  }
}

// In the hub's resource group and region.
module eventGridTopic 'modules/eventgrid-topic.bicep' = {
  name: 'connmon-eventgrid-topic'
  scope: resourceGroup(hubSubscriptionId, hubResourceGroup)
  params: {
    name: systemTopicName
    iotHubName: hubName
    tags: tags
  }
}

module roles 'modules/roles.bicep' = {
  name: 'connmon-roles'
  params: {
    storageAccountName: storage.outputs.name
    deadLetterContainerName: storage.outputs.deadLetterContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    appPrincipalId: functionApp.outputs.principalId
    eventGridPrincipalId: eventGridTopic.outputs.principalId
  }
}

// Second pass only: the function must exist.
module eventGridSubscription 'modules/eventgrid-subscription.bicep' = if (deploySubscription) {
  name: 'connmon-eventgrid-subscription'
  scope: resourceGroup(hubSubscriptionId, hubResourceGroup)
  params: {
    systemTopicName: eventGridTopic.outputs.name
    name: eventSubscriptionName
    functionAppId: functionApp.outputs.id
    deadLetterStorageAccountId: storage.outputs.id
    deadLetterContainerName: storage.outputs.deadLetterContainerName
    maxDeliveryAttempts: maxDeliveryAttempts
    eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
  }
  dependsOn: [
    // The topic's identity must be able to write dead letters before events can fail.
    roles
  ]
}

// ---------------------------------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------------------------------

output functionAppName string = functionApp.outputs.name
output functionAppId string = functionApp.outputs.id
output storageAccountName string = storage.outputs.name
output principalId string = functionApp.outputs.principalId
output applicationInsightsName string = monitoring.outputs.applicationInsightsName
output eventGridSystemTopicName string = eventGridTopic.outputs.name
output iotHubResourceGroup string = hubResourceGroup
output iotHubResourceId string = hubId
// The --endpoint of `az eventgrid event-subscription create --endpoint-type azurefunction`.
output connectionEventFunctionId string = '${functionApp.outputs.id}/functions/ConnectionEvent'
output deadLetterContainerId string = '${storage.outputs.id}/blobServices/default/containers/${storage.outputs.deadLetterContainerName}'
