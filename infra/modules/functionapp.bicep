// The hosting plan and the Function App that runs connmon as a custom handler (runtime `custom`; the
// host starts bin/connmon, named by host.json's customHandler.description.defaultExecutablePath).
// Two shapes of Microsoft.Web/sites, one per family of plans:
//   - Flex Consumption: runtime, scale and deployment source live in `functionAppConfig`; the
//     FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION / WEBSITE_RUN_FROM_PACKAGE / content-share
//     app settings are not used ("Flex Consumption plan deprecations" in "App settings reference for
//     Azure Functions").
//   - Elastic Premium and Dedicated (App Service) on Linux: runtime from app settings, zip deploy run
//     from the package.

@description('flex, premium or dedicated (see main.bicep).')
@allowed([
  'flex'
  'premium'
  'dedicated'
])
param plan string

@description('Region of the plan and the app.')
param location string

@description('Name of the hosting plan.')
param planName string

@description('Globally unique name of the Function App.')
param appName string

@description('App Service plan size when plan = dedicated.')
param dedicatedSku string = 'B1'

@description('Flex Consumption: highest instance count.')
param flexMaximumInstanceCount int = 40

@description('Flex Consumption: instance memory in MB.')
param flexInstanceMemoryMB int = 2048

@description('Elastic Premium: highest instance count of the plan.')
param premiumMaximumElasticWorkerCount int = 20

@description('The app\'s storage account (AzureWebJobsStorage), in this resource group.')
param storageAccountName string

@description('Flex Consumption: URL of the blob container that holds the deployment package.')
param deploymentContainerUrl string = ''

@description('Application Insights connection string.')
param applicationInsightsConnectionString string

@description('Tags for the plan and the app.')
param tags object = {}

// connmon's settings, passed through as app settings of the same name (README "Settings").
param CONNMON_GRACE_PERIOD string
@secure()
param CONNMON_ALERT_WEBHOOK_URL string
param CONNMON_STORE string
param CONNMON_TABLE_NAME string
@secure()
param CONNMON_TABLE_CONNECTION string
param CONNMON_SQLITE_PATH string
@secure()
param CONNMON_TEAMS_WEBHOOK_URL string
@secure()
param CONNMON_SLACK_WEBHOOK_URL string
@secure()
param CONNMON_PAGERDUTY_ROUTING_KEY string
param CONNMON_PAGERDUTY_EVENTS_URL string
param CONNMON_GROUP_THRESHOLD string
param CONNMON_QUICK_RETRY_FOR string
param CONNMON_INCLUDE string
param CONNMON_EXCLUDE string
param CONNMON_GRACE_OVERRIDES string
param CONNMON_SILENCES string
param CONNMON_FLAP_THRESHOLD string
param CONNMON_FLAP_WINDOW string
param CONNMON_REMIND_EVERY string
param CONNMON_HUB_QUIET_AFTER string

var isFlex = plan == 'flex'
var isPremium = plan == 'premium'
var storageSuffix = environment().suffixes.storage

// Identity-based host storage with the system-assigned identity ("Configure connections to remote
// services in Azure Functions", Host required: AzureWebJobsStorage__*ServiceUri + __credential). The
// same settings give connmon's table client its endpoint: it reads AzureWebJobsStorage__tableServiceUri
// (or __accountName) and accepts __credential=managedidentity (src/store/table/conn.rs).
// Application Insights with Entra ID: APPLICATIONINSIGHTS_AUTHENTICATION_STRING (same article).
var hostSettings = {
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__blobServiceUri: 'https://${storageAccountName}.blob.${storageSuffix}'
  AzureWebJobsStorage__queueServiceUri: 'https://${storageAccountName}.queue.${storageSuffix}'
  AzureWebJobsStorage__tableServiceUri: 'https://${storageAccountName}.table.${storageSuffix}'
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'
}

// A setting that is present but blank counts as unset in connmon, so the secrets (and every optional
// setting) can always be written, empty by default. CONNMON_LISTEN and CONNMON_SWEEP_INTERVAL are standalone-only and not set.
var connmonSettings = {
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

// Premium and Dedicated: the runtime is chosen by app settings. The custom handler stack's Linux entry
// in the Functions stacks API is FUNCTIONS_WORKER_RUNTIME=custom with an empty linuxFxVersion
// (Microsoft.Web/functionAppStacks, as shipped in Az.Functions' functionAppStacks.json, stack
// "custom"). WEBSITE_RUN_FROM_PACKAGE=1 runs the zip-deployed package in place, as recommended for
// Linux Premium and Dedicated ("Run your functions from a package file in Azure").
var classicSettings = {
  FUNCTIONS_EXTENSION_VERSION: '~4'
  FUNCTIONS_WORKER_RUNTIME: 'custom'
  WEBSITE_RUN_FROM_PACKAGE: '1'
}

var premiumSku = {
  tier: 'ElasticPremium'
  name: 'EP1'
  family: 'EP'
}
var dedicatedPlanSku = {
  name: dedicatedSku
}
var premiumPlanProperties = {
  reserved: true
  maximumElasticWorkerCount: premiumMaximumElasticWorkerCount
}
var dedicatedPlanProperties = {
  reserved: true
}

var flexAppSettings = union(hostSettings, connmonSettings)
var classicAppSettings = [for setting in items(union(hostSettings, connmonSettings, classicSettings)): {
  name: setting.key
  value: setting.value
}]

// ---------------------------------------------------------------------------------------------------
// Flex Consumption (FC1). Shape from Microsoft's samples: Azure-Samples/
// azure-functions-flex-consumption-samples IaC/bicep/main.bicep and azure-quickstart-templates
// function-app-flex-managed-identities/main.bicep. Runtime `custom`, version `1.0` is the custom handler
// entry of the Flex stacks ("Get-AzFunctionAppFlexConsumptionRuntime" lists `custom 1.0`; the stacks
// API's functionAppConfigProperties.runtime = { name: 'custom', version: '1.0' }).
// ---------------------------------------------------------------------------------------------------
resource flexPlan 'Microsoft.Web/serverfarms@2024-04-01' = if (isFlex) {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource flexApp 'Microsoft.Web/sites@2024-04-01' = if (isFlex) {
  name: appName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: flexPlan.id
    httpsOnly: true
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: flexMaximumInstanceCount
        instanceMemoryMB: flexInstanceMemoryMB
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
  }
}

// App settings of a Flex app as a `config/appsettings` child, as the quickstart template does.
resource flexAppSettingsConfig 'Microsoft.Web/sites/config@2024-04-01' = if (isFlex) {
  parent: flexApp
  name: 'appsettings'
  properties: flexAppSettings
}

// ---------------------------------------------------------------------------------------------------
// Elastic Premium (EP1) or Dedicated, Linux. Plan and site shapes from "Automate resource deployment for
// your function app in Azure Functions" (Premium / Dedicated, Linux) and Azure-Samples/
// function-app-arm-templates function-app-premium-plan/main.bicep.
// ---------------------------------------------------------------------------------------------------
resource classicPlan 'Microsoft.Web/serverfarms@2024-04-01' = if (!isFlex) {
  name: planName
  location: location
  tags: tags
  kind: isPremium ? 'elastic' : 'linux'
  sku: isPremium ? premiumSku : dedicatedPlanSku
  properties: isPremium ? premiumPlanProperties : dedicatedPlanProperties
}

resource classicApp 'Microsoft.Web/sites@2024-04-01' = if (!isFlex) {
  name: appName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: classicPlan.id
    reserved: true
    httpsOnly: true
    siteConfig: {
      linuxFxVersion: ''
      // Dedicated: without Always On the host idles and only HTTP triggers wake it, so the minute timer
      // would stop; Premium must not set it ("Enable Always On when running on dedicated App Service
      // Plan", Azure Functions wiki).
      alwaysOn: !isPremium
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      // Premium keeps the app content on an Azure Files share, which supports only key-based access
      // ("Configure connections to remote services in Azure Functions": Elastic Premium needs
      // WEBSITE_CONTENTAZUREFILECONNECTIONSTRING; "Azure Files doesn't currently support managed
      // identity connections"). These two settings are set at creation, as the Premium sample does.
      appSettings: concat(classicAppSettings, isPremium ? [
        {
          name: 'WEBSITE_CONTENTAZUREFILECONNECTIONSTRING'
          value: 'DefaultEndpointsProtocol=https;AccountName=${storage.name};EndpointSuffix=${storageSuffix};AccountKey=${storage.listKeys().keys[0].value}'
        }
        {
          name: 'WEBSITE_CONTENTSHARE'
          value: toLower(appName)
        }
      ] : [])
    }
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

output name string = appName
output id string = resourceId('Microsoft.Web/sites', appName)
// ARM evaluates only the selected branch of if(), so the reference to the app that was not deployed is
// never made ("Conditional deployment in ARM templates": use if() around reference()).
output principalId string = isFlex ? flexApp.identity.principalId : classicApp.identity.principalId
output defaultHostName string = isFlex ? flexApp.properties.defaultHostName : classicApp.properties.defaultHostName
