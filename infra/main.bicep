// kvassert on Azure: a Key Vault holding a non-exportable certificate, a Linux App Service whose
// system-assigned identity may only read that certificate's public part and sign with its key,
// and the Entra app registration whose credential is that certificate's public key.
//
// Order: vault (bootstrap) -> certificate (deployment script) -> Entra app -> web app -> roles ->
// vault (final firewall). The vault is deployed twice because the deployment script runs in a
// container with no fixed address: while it creates the certificate the firewall can be opened
// (openVaultFirewallForCertificateScript), and the final pass applies the requested rules plus
// the web app's outbound addresses or subnet.

targetScope = 'resourceGroup'

metadata description = 'kvassert: Key Vault certificate signer for an App Service app authenticating to Entra ID.'

@description('Short prefix for resource names (letters, digits, hyphens).')
@minLength(3)
@maxLength(10)
param namePrefix string = 'kvassert'

@description('Region for every resource.')
param location string = resourceGroup().location

@description('Tags applied to every Azure resource.')
param tags object = {
  workload: 'kvassert'
}

// ---------- Key Vault ----------

@description('Key Vault name (globally unique, at most 24 characters).')
@maxLength(24)
param keyVaultName string = take('${namePrefix}-${uniqueString(resourceGroup().id)}', 24)

@description('standard, or premium (required for RSA-HSM keys).')
@allowed([
  'standard'
  'premium'
])
param keyVaultSku string = 'standard'

@description('Vault firewall default action once deployment is complete.')
@allowed([
  'Allow'
  'Deny'
])
param keyVaultNetworkDefaultAction string = 'Deny'

@description('Let trusted Azure services bypass the vault firewall.')
@allowed([
  'AzureServices'
  'None'
])
param keyVaultNetworkBypass string = 'AzureServices'

@description('Public IPv4 addresses / CIDR ranges allowed to reach the vault (e.g. an operator workstation).')
param keyVaultIpRules array = []

@description('Subnet resource IDs (Microsoft.KeyVault service endpoint enabled) allowed to reach the vault.')
param keyVaultSubnetIds array = []

@description('Vault public endpoint. Disabled only with private endpoints you provide.')
@allowed([
  'Enabled'
  'Disabled'
])
param keyVaultPublicNetworkAccess string = 'Enabled'

@description('Add the web app outbound IPv4 addresses to the vault firewall (ignored with appServiceSubnetId).')
param allowAppServiceOutboundIps bool = true

@description('Open the vault firewall while the certificate script runs (it has no fixed address); the final pass closes it.')
param openVaultFirewallForCertificateScript bool = true

// ---------- Certificate ----------

@description('Certificate name in the vault.')
@maxLength(70)
param certificateName string = 'kvassert-client'

@description('X.509 subject of the certificate.')
param certificateSubject string = 'CN=${namePrefix}-client'

@description('RSA (software key) or RSA-HSM (HSM key; needs keyVaultSku premium).')
@allowed([
  'RSA'
  'RSA-HSM'
])
param certificateKeyType string = 'RSA'

@description('RSA key size.')
@allowed([
  2048
  3072
  4096
])
param certificateKeySize int = 2048

@description('Validity of each certificate version in months.')
@minValue(1)
@maxValue(120)
param certificateValidityInMonths int = 12

@description('Auto-renew when this percentage of the lifetime has elapsed.')
@minValue(1)
@maxValue(99)
param certificateRenewAtLifetimePercentage int = 80

// ---------- App Service ----------

@description('Web app name (globally unique host name).')
@maxLength(60)
param webAppName string = '${namePrefix}-app-${uniqueString(resourceGroup().id)}'

@description('App Service plan SKU (Basic or higher: Always On, VNet integration).')
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
param appServicePlanSku string = 'B1'

@description('App Service plan instance count.')
param appServicePlanCapacity int = 1

@description('Zone-redundant plan (Premium v3, capacity 2 or more).')
param appServiceZoneRedundant bool = false

@description('gunicorn startup command (module:callable of your WSGI app).')
param startupCommand string = 'gunicorn --bind=0.0.0.0:8000 --workers=2 --timeout=120 app:app'

@description('Health probe path served by the app.')
param healthCheckPath string = '/healthz'

@description('Subnet for regional VNet integration; it is added to the vault VNet rules. Empty: none.')
param appServiceSubnetId string = ''

// ---------- Access ----------

@description('custom: one custom role (certificates/read + keys/sign). builtin: Key Vault Crypto User + Key Vault Reader.')
@allowed([
  'custom'
  'builtin'
])
param keyVaultRoleMode string = 'custom'

// ---------- Entra ID ----------

@description('Display name of the Entra app registration.')
param appRegistrationDisplayName string = '${namePrefix} Key Vault signed client'

@description('Immutable unique name of the Entra app registration.')
param appRegistrationUniqueName string = '${namePrefix}-${uniqueString(resourceGroup().id)}'

@description('Public keys to keep registered besides the vault certificate versions: [{key, displayName, startDateTime, endDateTime}].')
param additionalKeyCredentials array = []

var planName = 'plan-${webAppName}'

var bootstrapDefaultAction = openVaultFirewallForCertificateScript ? 'Allow' : keyVaultNetworkDefaultAction
var bootstrapPublicNetworkAccess = openVaultFirewallForCertificateScript ? 'Enabled' : keyVaultPublicNetworkAccess

module keyVaultBootstrap 'modules/keyvault.bicep' = {
  name: take('${deployment().name}-keyvault-bootstrap', 64)
  params: {
    name: keyVaultName
    location: location
    tags: tags
    skuName: keyVaultSku
    networkDefaultAction: bootstrapDefaultAction
    networkBypass: keyVaultNetworkBypass
    ipRules: keyVaultIpRules
    virtualNetworkSubnetIds: keyVaultSubnetIds
    publicNetworkAccess: bootstrapPublicNetworkAccess
  }
}

module certificate 'modules/certificate.bicep' = {
  name: take('${deployment().name}-certificate', 64)
  params: {
    keyVaultName: keyVaultBootstrap.outputs.name
    keyVaultSkuName: keyVaultSku
    location: location
    tags: tags
    certificateName: certificateName
    subjectName: certificateSubject
    keyType: certificateKeyType
    keySize: certificateKeySize
    validityInMonths: certificateValidityInMonths
    renewAtLifetimePercentage: certificateRenewAtLifetimePercentage
  }
}

module appRegistration 'modules/appregistration.bicep' = {
  name: take('${deployment().name}-appregistration', 64)
  params: {
    uniqueName: appRegistrationUniqueName
    displayName: appRegistrationDisplayName
    certificates: certificate.outputs.validCertificates
    additionalKeyCredentials: additionalKeyCredentials
  }
}

module appService 'modules/appservice.bicep' = {
  name: take('${deployment().name}-appservice', 64)
  params: {
    name: webAppName
    planName: planName
    location: location
    tags: tags
    planSkuName: appServicePlanSku
    planCapacity: appServicePlanCapacity
    zoneRedundant: appServiceZoneRedundant
    appCommandLine: startupCommand
    healthCheckPath: healthCheckPath
    subnetId: appServiceSubnetId
    tenantId: tenant().tenantId
    clientId: appRegistration.outputs.clientId
    keyVaultUri: keyVaultBootstrap.outputs.uri
    certificateName: certificate.outputs.name
  }
}

module keyVaultAccess 'modules/roles.bicep' = {
  name: take('${deployment().name}-keyvault-roles', 64)
  params: {
    keyVaultName: keyVaultBootstrap.outputs.name
    principalId: appService.outputs.principalId
    roleMode: keyVaultRoleMode
  }
}

var useAppServiceOutboundIps = allowAppServiceOutboundIps && empty(appServiceSubnetId)
var appServiceIpRules = useAppServiceOutboundIps ? split(appService.outputs.possibleOutboundIpAddresses, ',') : []
var appServiceSubnetRules = empty(appServiceSubnetId) ? [] : [appServiceSubnetId]

module keyVault 'modules/keyvault.bicep' = {
  name: take('${deployment().name}-keyvault', 64)
  params: {
    name: keyVaultBootstrap.outputs.name
    location: location
    tags: tags
    skuName: keyVaultSku
    networkDefaultAction: keyVaultNetworkDefaultAction
    networkBypass: keyVaultNetworkBypass
    ipRules: concat(keyVaultIpRules, appServiceIpRules)
    virtualNetworkSubnetIds: concat(keyVaultSubnetIds, appServiceSubnetRules)
    publicNetworkAccess: keyVaultPublicNetworkAccess
  }
  dependsOn: [
    certificate
    keyVaultAccess
  ]
}

@description('Key Vault name.')
output keyVaultName string = keyVault.outputs.name

@description('Key Vault URI (AzureAd__ClientCredentials__0__KeyVaultUrl).')
output keyVaultUri string = keyVault.outputs.uri

@description('Certificate name (AzureAd__ClientCredentials__0__KeyVaultCertificateName).')
output certificateName string = certificate.outputs.name

@description('SHA-1 thumbprint of the current certificate version.')
output certificateThumbprint string = certificate.outputs.thumbprint

@description('Web app name.')
output webAppName string = appService.outputs.name

@description('Web app URL.')
output webAppUrl string = 'https://${appService.outputs.defaultHostName}'

@description('Principal ID of the web app identity (the only app principal with Key Vault data access).')
output webAppPrincipalId string = appService.outputs.principalId

@description('Application (client) ID of the Entra app registration.')
output clientId string = appRegistration.outputs.clientId

@description('Object ID of the Entra service principal.')
output servicePrincipalId string = appRegistration.outputs.servicePrincipalId

@description('The AzureAd section for a local appsettings.json (same values as the web app settings).')
output azureAd object = {
  Instance: environment().authentication.loginEndpoint
  TenantId: tenant().tenantId
  ClientId: appRegistration.outputs.clientId
  ClientCredentials: [
    {
      SourceType: 'KeyVault'
      KeyVaultUrl: keyVault.outputs.uri
      KeyVaultCertificateName: certificate.outputs.name
    }
  ]
}
