// Entra app registration (and its service principal) that kvassert signs in as. Its credentials
// are the PUBLIC certificates of the Key Vault certificate: one keyCredential per enabled,
// unexpired version, so a renewed version and its predecessor overlap until the old one expires
// or is disabled and the deployment is run again. No password credentials.

metadata description = 'Entra application + service principal with the Key Vault certificate public keys as keyCredentials.'

extension microsoftGraphV1

@description('Immutable alternate key of the application (idempotent re-deployments).')
param uniqueName string

@description('Display name of the application.')
param displayName string

@description('Public certificates from the certificate module: [{cer, thumbprint, notBefore, expires}].')
param certificates array

@description('Other public keys to keep during a rotation: [{key, displayName, startDateTime, endDateTime}].')
param additionalKeyCredentials array = []

var vaultKeyCredentials = [
  for certificate in certificates: {
    type: 'AsymmetricX509Cert'
    usage: 'Verify'
    key: certificate.cer
    displayName: 'kvassert Key Vault certificate ${certificate.thumbprint}'
    startDateTime: certificate.notBefore
    endDateTime: certificate.expires
  }
]

var extraKeyCredentials = [
  for credential in additionalKeyCredentials: {
    type: 'AsymmetricX509Cert'
    usage: 'Verify'
    key: credential.key
    displayName: credential.displayName
    startDateTime: credential.startDateTime
    endDateTime: credential.endDateTime
  }
]

resource application 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  signInAudience: 'AzureADMyOrg'
  keyCredentials: concat(vaultKeyCredentials, extraKeyCredentials)
}

resource servicePrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: application.appId
}

@description('Application (client) ID: AzureAd__ClientId.')
output clientId string = application.appId

@description('Object ID of the application.')
output applicationObjectId string = application.id

@description('Object ID of the service principal (grant API permissions / app roles to this).')
output servicePrincipalId string = servicePrincipal.id
