// Parameters for `az deployment group create --template-file infra/main.bicep --parameters infra/main.bicepparam`.
// Every value below is the template default, written out so it is easy to change.
using './main.bicep'

param namePrefix = 'kvassert'

// Key Vault: premium is needed only for certificateKeyType = 'RSA-HSM'.
param keyVaultSku = 'standard'
param keyVaultNetworkDefaultAction = 'Deny'
param keyVaultNetworkBypass = 'AzureServices'
// Add your workstation (e.g. '203.0.113.7') to run `kvassert check --online` from it.
param keyVaultIpRules = []
param keyVaultSubnetIds = []
param keyVaultPublicNetworkAccess = 'Enabled'
param allowAppServiceOutboundIps = true
param openVaultFirewallForCertificateScript = true

// Certificate policy (exportable: false is fixed in modules/certificate.bicep).
param certificateName = 'kvassert-client'
param certificateKeyType = 'RSA'
param certificateKeySize = 2048
param certificateValidityInMonths = 12
param certificateRenewAtLifetimePercentage = 80

// App Service
param appServicePlanSku = 'B1'
param appServicePlanCapacity = 1
param appServiceZoneRedundant = false
param startupCommand = 'gunicorn --bind=0.0.0.0:8000 --workers=2 --timeout=120 app:app'
param healthCheckPath = '/healthz'
param appServiceSubnetId = ''

// Key Vault access for the web app: 'custom' (certificates/read + keys/sign) or 'builtin'.
param keyVaultRoleMode = 'custom'
