// Log Analytics workspace and the workspace-based Application Insights component the Functions host
// writes to. connmon's own log lines (stdout = Information, stderr = Error, `ALERT …` lines) and each
// invocation's `Logs` reach Application Insights through the host, in the `traces` table.

@description('Region of the workspace and the component.')
param location string

@description('Name of the Log Analytics workspace.')
param logAnalyticsName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Tags for both resources.')
param tags object = {}

// Shape as in Microsoft's Flex Consumption quickstart template (azure-quickstart-templates,
// function-app-flex-managed-identities/main.bicep).
resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    retentionInDays: 30
    sku: {
      name: 'PerGB2018'
    }
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    // Only Microsoft Entra authenticated telemetry is accepted: the app sends it with its managed
    // identity (APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD) and needs the
    // Monitoring Metrics Publisher role ("Configure connections to remote services in Azure
    // Functions", Host required; Azure-Samples/azure-functions-flex-consumption-samples IaC/bicep).
    DisableLocalAuth: true
  }
}

output applicationInsightsName string = applicationInsights.name
output applicationInsightsId string = applicationInsights.id
// Not a secret: with local authentication disabled the instrumentation key alone cannot send data.
output connectionString string = applicationInsights.properties.ConnectionString
