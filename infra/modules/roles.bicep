// Key Vault data-plane access for the web app's system-assigned identity, scoped to the vault.
//
// kvassert needs exactly two data actions:
//   Microsoft.KeyVault/vaults/certificates/read  - the certificate's public part (cer, x5t, kid)
//   Microsoft.KeyVault/vaults/keys/sign/action   - Key Vault signs the assertion digest
// roleMode 'custom' (default) grants precisely those through one custom role. roleMode 'builtin'
// is for deployers who may assign but not define roles: Key Vault Crypto User (sign, plus other
// key operations) and Key Vault Reader (metadata read, which includes certificates/read).
// Never granted: Key Vault Secrets User (4633458b-...) or Key Vault Certificate User (db79e9a7-...):
// both include secrets/getSecret, which would hand the app the certificate's secret.

metadata description = 'Least-privilege Key Vault role assignments (certificates/read + keys/sign) for the web app identity.'

@description('Name of the Key Vault (same resource group).')
param keyVaultName string

@description('Object (principal) ID of the web app system-assigned identity.')
param principalId string

@description('custom: one custom role with certificates/read + keys/sign. builtin: Key Vault Crypto User + Key Vault Reader.')
@allowed([
  'custom'
  'builtin'
])
param roleMode string = 'custom'

var cryptoUserRoleId = '12338af0-0e69-4776-bea7-57ae8d297424'
var keyVaultReaderRoleId = '21090545-7ca7-4776-b22c-e363652d74d2'

resource vault 'Microsoft.KeyVault/vaults@2024-11-01' existing = {
  name: keyVaultName
}

resource signerRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (roleMode == 'custom') {
  name: guid(resourceGroup().id, 'kvassert-certificate-signer')
  properties: {
    roleName: 'kvassert certificate signer (${uniqueString(resourceGroup().id)})'
    description: 'Read a Key Vault certificate (public part only) and sign digests with its key. No access to secrets.'
    type: 'CustomRole'
    assignableScopes: [
      resourceGroup().id
    ]
    permissions: [
      {
        actions: []
        notActions: []
        dataActions: [
          'Microsoft.KeyVault/vaults/certificates/read'
          'Microsoft.KeyVault/vaults/keys/sign/action'
        ]
        notDataActions: []
      }
    ]
  }
}

resource signerAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (roleMode == 'custom') {
  name: guid(vault.id, principalId, 'kvassert-certificate-signer')
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', signerRole.name)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'kvassert: read the certificate public part and sign with its key'
  }
}

resource cryptoUserAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (roleMode == 'builtin') {
  name: guid(vault.id, principalId, cryptoUserRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', cryptoUserRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'kvassert: sign with the certificate key (Key Vault Crypto User)'
  }
}

resource readerAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (roleMode == 'builtin') {
  name: guid(vault.id, principalId, keyVaultReaderRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultReaderRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'kvassert: read the certificate public part (Key Vault Reader)'
  }
}
