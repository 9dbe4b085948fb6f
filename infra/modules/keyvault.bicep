// Key Vault for kvassert: Azure RBAC only (no access policies), soft delete and purge protection
// always on, firewall driven by parameters. The vault holds one non-exportable certificate whose
// key signs Entra client assertions; nobody needs (or gets) its secret.

metadata description = 'Key Vault in RBAC mode with soft delete, purge protection and a parameterised firewall.'

@description('Vault name: 3-24 characters, letters, digits and hyphens, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Region of the vault.')
param location string = resourceGroup().location

@description('Tags applied to the vault.')
param tags object = {}

@description('standard: software-protected keys (RSA). premium: also HSM-protected keys (RSA-HSM).')
@allowed([
  'standard'
  'premium'
])
param skuName string = 'standard'

@description('Days a deleted vault or object stays recoverable. Fixed once the vault exists.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('Firewall default for traffic that matches no IP or VNet rule.')
@allowed([
  'Allow'
  'Deny'
])
param networkDefaultAction string = 'Deny'

@description('Whether trusted Azure services may bypass the firewall.')
@allowed([
  'AzureServices'
  'None'
])
param networkBypass string = 'AzureServices'

@description('Public IPv4 addresses or CIDR ranges allowed through the firewall.')
param ipRules array = []

@description('Subnet resource IDs (with the Microsoft.KeyVault service endpoint) allowed through the firewall.')
param virtualNetworkSubnetIds array = []

@description('Enabled: the public endpoint answers, filtered by the firewall above. Disabled: private endpoints only.')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Enabled'

resource vault 'Microsoft.KeyVault/vaults@2024-11-01' = {
  // checkov:skip=CKV_AZURE_189: App Service and the certificate deployment script reach the vault over its public endpoint; the firewall (default Deny plus IP and VNet rules) filters it, and Disabled is a parameter value for private-endpoint setups
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: skuName
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      defaultAction: networkDefaultAction
      bypass: networkBypass
      ipRules: [
        for ip in ipRules: {
          value: ip
        }
      ]
      virtualNetworkRules: [
        for subnetId in virtualNetworkSubnetIds: {
          id: subnetId
          ignoreMissingVnetServiceEndpoint: false
        }
      ]
    }
  }
}

@description('Name of the vault.')
output name string = vault.name

@description('Resource ID of the vault.')
output id string = vault.id

@description('Data-plane URI of the vault, e.g. https://NAME.vault.azure.net/.')
output uri string = vault.properties.vaultUri

@description('SKU of the vault (standard or premium).')
output skuName string = vault.properties.sku.name
