// Linux App Service (plan + site) for a Python app that uses kvassert. The site's system-assigned
// identity is what kvassert presents to Key Vault; the AzureAd__* app settings are the
// Microsoft.Identity.Web-style configuration kvassert reads from the environment.

metadata description = 'Linux Python web app with a system-assigned identity and kvassert AzureAd__* app settings.'

@description('Web app name (globally unique host name).')
@minLength(2)
@maxLength(60)
param name string

@description('App Service plan name.')
param planName string

@description('Region of the plan and the site.')
param location string = resourceGroup().location

@description('Tags applied to the plan and the site.')
param tags object = {}

@description('Plan SKU. Basic and up support Always On and VNet integration.')
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
param planSkuName string = 'B1'

@description('Number of plan instances (zone redundancy needs Premium v3 and at least 2).')
@minValue(1)
@maxValue(30)
param planCapacity int = 1

@description('Spread the plan over availability zones (Premium v3 only).')
param zoneRedundant bool = false

@description('Runtime stack of the Linux site.')
param linuxFxVersion string = 'PYTHON|3.12'

@description('Startup command: gunicorn serving the WSGI app (module:callable) on port 8000.')
param appCommandLine string = 'gunicorn --bind=0.0.0.0:8000 --workers=2 --timeout=120 app:app'

@description('Path App Service probes for instance health; the app must answer it with 2xx.')
param healthCheckPath string = '/healthz'

@description('Subnet for regional VNet integration (outbound), or empty for none.')
param subnetId string = ''

@description('Entra tenant ID of the app registration.')
param tenantId string

@description('Application (client) ID of the Entra app registration kvassert signs in as.')
param clientId string

@description('Key Vault URI, e.g. https://NAME.vault.azure.net/.')
param keyVaultUri string

@description('Name of the certificate in that vault.')
param certificateName string

@description('Client ID of a user-assigned identity for Key Vault, or empty to use the system-assigned one.')
param managedIdentityClientId string = ''

@description('Extra app settings (name/value pairs) appended after the AzureAd__* ones.')
param extraAppSettings array = []

var azureAdSettings = [
  {
    name: 'AzureAd__Instance'
    value: environment().authentication.loginEndpoint
  }
  {
    name: 'AzureAd__TenantId'
    value: tenantId
  }
  {
    name: 'AzureAd__ClientId'
    value: clientId
  }
  {
    name: 'AzureAd__ClientCredentials__0__SourceType'
    value: 'KeyVault'
  }
  {
    name: 'AzureAd__ClientCredentials__0__KeyVaultUrl'
    value: keyVaultUri
  }
  {
    name: 'AzureAd__ClientCredentials__0__KeyVaultCertificateName'
    value: certificateName
  }
]

var managedIdentitySettings = empty(managedIdentityClientId) ? [] : [
  {
    name: 'AzureAd__ClientCredentials__0__ManagedIdentityClientId'
    value: managedIdentityClientId
  }
]

var platformSettings = [
  {
    name: 'SCM_DO_BUILD_DURING_DEPLOYMENT'
    value: 'true'
  }
]

resource plan 'Microsoft.Web/serverfarms@2024-11-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy needs Premium v3 with two or more instances; it is the zoneRedundant parameter, off by default so the sample deploys on a Basic plan
  name: planName
  location: location
  tags: tags
  kind: 'linux'
  sku: {
    name: planSkuName
    capacity: planCapacity
  }
  properties: {
    reserved: true
    zoneRedundant: zoneRedundant
  }
}

resource site 'Microsoft.Web/sites@2024-11-01' = {
  // checkov:skip=CKV_AZURE_17: callers are not asked for TLS client certificates; this app authenticates outward to Entra with a Key Vault certificate, which is a different thing
  // checkov:skip=CKV_AZURE_222: the web app is the public entry point of the sample; put it behind access restrictions, Front Door or a private endpoint per deployment
  // checkov:skip=CKV_AZURE_212: instance count belongs to the plan (planCapacity parameter); one worker keeps the sample cheap, raise it for failover
  name: name
  location: location
  tags: tags
  kind: 'app,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientAffinityEnabled: false
    publicNetworkAccess: 'Enabled'
    virtualNetworkSubnetId: empty(subnetId) ? null : subnetId
    siteConfig: {
      linuxFxVersion: linuxFxVersion
      appCommandLine: appCommandLine
      alwaysOn: true
      http20Enabled: true
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      remoteDebuggingEnabled: false
      healthCheckPath: healthCheckPath
      vnetRouteAllEnabled: !empty(subnetId)
      appSettings: concat(azureAdSettings, managedIdentitySettings, platformSettings, extraAppSettings)
    }
  }
}

// Basic-auth publishing (FTP and SCM/Kudu user+password) off: deploy with Entra ID instead.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-11-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-11-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

@description('Name of the web app.')
output name string = site.name

@description('Default host name of the web app.')
output defaultHostName string = site.properties.defaultHostName

@description('Principal ID of the web app system-assigned identity (the Key Vault caller).')
output principalId string = site.identity.principalId

@description('Every outbound IPv4 address the site may use, comma-separated.')
output possibleOutboundIpAddresses string = site.properties.possibleOutboundIpAddresses
