// The signing certificate: created inside Key Vault by a deployment script with kvassert's own
// policy (non-exportable key, digitalSignature only, self-signed, auto-renewed). The script runs
// as a dedicated user-assigned identity that holds only Key Vault Certificates Officer on this
// vault; its outputs carry the certificate's public part (DER, base64) for the Entra app.

metadata description = 'Non-exportable self-signed certificate in Key Vault, created by a deployment script; outputs its public part.'

@description('Name of an existing Key Vault (RBAC mode).')
param keyVaultName string

@description('SKU of that vault; RSA-HSM keys need premium.')
@allowed([
  'standard'
  'premium'
])
param keyVaultSkuName string

@description('Region for the script identity and the deployment script.')
param location string = resourceGroup().location

@description('Tags applied to the identity and the deployment script.')
param tags object = {}

@description('Certificate name in the vault (letters, digits, hyphens; at most 70 so the script name fits).')
@minLength(1)
@maxLength(70)
param certificateName string

@description('X.509 subject of the self-signed certificate.')
param subjectName string = 'CN=${certificateName}'

@description('RSA: software-protected key. RSA-HSM: HSM-protected key, needs a premium vault.')
@allowed([
  'RSA'
  'RSA-HSM'
])
param keyType string = 'RSA'

@description('RSA key size in bits.')
@allowed([
  2048
  3072
  4096
])
param keySize int = 2048

@description('Validity of each certificate version, in months.')
@minValue(1)
@maxValue(120)
param validityInMonths int = 12

@description('Key Vault renews the certificate (new key, reuseKey false) when this share of its lifetime has passed.')
@minValue(1)
@maxValue(99)
param renewAtLifetimePercentage int = 80

@description('Azure CLI image version for the deployment script.')
param azCliVersion string = '2.67.0'

@description('Changes on every deployment so the script re-reads the current versions (rotation).')
param forceUpdateTag string = utcNow()

var certificatesOfficerRoleId = 'a4417e6f-fecd-4de8-b567-7b0420556985'

// az keyvault certificate create --policy format. exportable: false keeps the private key inside
// Key Vault: the secret behind the certificate then holds only the public chain.
var certificatePolicy = {
  keyProperties: {
    exportable: false
    keyType: keyType
    keySize: keySize
    reuseKey: false
  }
  secretProperties: {
    contentType: 'application/x-pem-file'
  }
  x509CertificateProperties: {
    subject: subjectName
    keyUsage: [
      'digitalSignature'
    ]
    validityInMonths: validityInMonths
  }
  issuerParameters: {
    name: 'Self'
  }
  lifetimeActions: [
    {
      trigger: {
        lifetimePercentage: renewAtLifetimePercentage
      }
      action: {
        actionType: 'AutoRenew'
      }
    }
  ]
}

resource vault 'Microsoft.KeyVault/vaults@2024-11-01' existing = {
  name: keyVaultName
}

resource scriptIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${keyVaultName}-certificate-script'
  location: location
  tags: tags
}

// Certificates Officer on this vault only: create the certificate, read its public part.
resource scriptCertificatesOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, scriptIdentity.id, certificatesOfficerRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', certificatesOfficerRoleId)
    principalId: scriptIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    description: 'kvassert deployment script: create ${certificateName} and read its public part'
  }
}

resource createCertificate 'Microsoft.Resources/deploymentScripts@2023-08-01' = {
  name: 'create-certificate-${certificateName}'
  location: location
  tags: tags
  kind: 'AzureCLI'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${scriptIdentity.id}': {}
    }
  }
  properties: {
    azCliVersion: azCliVersion
    forceUpdateTag: forceUpdateTag
    timeout: 'PT30M'
    retentionInterval: 'PT1H'
    cleanupPreference: 'OnSuccess'
    environmentVariables: [
      {
        name: 'VAULT_NAME'
        value: vault.name
      }
      {
        name: 'CERT_NAME'
        value: certificateName
      }
      {
        name: 'CERT_POLICY'
        value: string(certificatePolicy)
      }
      {
        name: 'KEY_TYPE'
        value: keyType
      }
      {
        name: 'VAULT_SKU'
        value: keyVaultSkuName
      }
    ]
    scriptContent: loadTextContent('scripts/create-certificate.sh')
  }
  dependsOn: [
    scriptCertificatesOfficer
  ]
}

@description('Certificate name in the vault.')
output name string = certificateName

@description('ID of the current certificate version.')
output certificateId string = createCertificate.properties.outputs.certificateId

@description('Key ID (kid) bound to the current certificate version.')
output keyId string = createCertificate.properties.outputs.keyId

@description('Current certificate, DER in standard base64 (public part only).')
output cer string = createCertificate.properties.outputs.cer

@description('SHA-1 thumbprint (hex) of the current certificate.')
output thumbprint string = createCertificate.properties.outputs.thumbprint

@description('Every enabled, unexpired version: [{cer, thumbprint, notBefore, expires, id}].')
output validCertificates array = createCertificate.properties.outputs.validCertificates

@description('Principal ID of the deployment script identity (holds Certificates Officer on the vault).')
output scriptPrincipalId string = scriptIdentity.properties.principalId
