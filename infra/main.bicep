// The broker in Azure, as `azd up` provisions it (azure.yaml): a Flex Consumption function app on a
// storage account it reaches with a managed identity - no storage key anywhere - and Application
// Insights for its traces. The keys the broker checks come in as secure parameters (azd asks for
// them, or reads them from its environment), never as literals.
//
// What it creates, and why:
// - a user-assigned managed identity, the app's only credential to storage, with exactly the roles
//   it needs on the account: Storage Blob Data Owner (the Functions host keeps its own state and the
//   deployment package in blobs, and the broker its payloads and results; includes the user
//   delegation key the broker signs its upload and download URLs with) and Storage Queue Data
//   Contributor (the task queues);
// - the storage account: shared-key access off (so no connection string can work), TLS 1.2, HTTPS
//   only, no anonymous blob access; the containers the broker uses, a CORS rule that lets the demo
//   page move large files straight to Blob storage, and a lifecycle rule for the deployment package;
// - a Log Analytics workspace and Application Insights;
// - the Flex Consumption plan and the function app (Python 3.11), HTTPS only, TLS 1.2, no FTP, with
//   the app settings the broker reads (tests/test_infra.py checks every one is set here, and every
//   one set here is read).

targetScope = 'resourceGroup'

@description('A short name the resources are named after (azd passes the environment name).')
@minLength(3)
@maxLength(20)
param environmentName string

@description('Where the resources go.')
param location string = resourceGroup().location

@secure()
@description('Comma-separated worker keys (BROKER_WORKER_KEYS): python3 -c "import secrets; print(secrets.token_urlsafe(32))"')
param workerKeys string

@secure()
@description('Comma-separated client keys (BROKER_CLIENT_KEYS); empty: client routes open.')
param clientKeys string = ''

@secure()
@description('Signs lease tokens (BROKER_LEASE_SECRET): a long random value; comma-separated while rotating.')
param leaseSecret string

@description('Model names served, comma-separated (BROKER_MODELS); empty: any name.')
param models string = ''

@description('Deliveries after which a task fails (BROKER_MAX_ATTEMPTS).')
param maxAttempts int = 5

@description('Largest payload sent inline with predict, and largest inline result (BROKER_MAX_PAYLOAD_BYTES).')
param maxPayloadBytes int = 20971520

@description('Seconds a finished task\'s result is kept (BROKER_RESULT_TTL_SECONDS).')
param resultTtlSeconds int = 86400

@description('Seconds a task may wait to be started before it ends expired (BROKER_QUEUED_TTL_SECONDS).')
param queuedTtlSeconds int = 86400

@description('Most tasks one cleanup run handles (BROKER_CLEANUP_BATCH).')
param cleanupBatch int = 1000

@description('Read timeout of one storage call, seconds (BROKER_STORAGE_TIMEOUT_SECONDS).')
param storageTimeoutSeconds int = 20

@description('Most inline payload bytes in one claim (BROKER_MAX_CLAIM_BYTES).')
param maxClaimBytes int = 33554432

@description('Payloads up to this size ride inside a claim; larger ones go by URL (BROKER_INLINE_BYTES).')
param inlineBytes int = 1048576

@description('Largest payload a client may upload, and result a worker may upload (BROKER_MAX_UPLOAD_BYTES).')
param maxUploadBytes int = 8589934592

@description('Seconds an upload URL lets a client write, and a result URL read (BROKER_UPLOAD_SECONDS).')
param uploadSeconds int = 900

@description('Requests per client key and per token, e.g. 60/min; empty: no limit (BROKER_RATE_LIMIT).')
param rateLimit string = ''

@description('Origins whose pages may call the broker from a browser (the platform\'s CORS), e.g. [\'https://app.example.com\'].')
param allowedOrigins array = []

@secure()
@description('Signs webhooks (BROKER_WEBHOOK_SECRET): whsec_ and the base64 of 24-64 random bytes; empty: no webhooks.')
param webhookSecret string = ''

@description('Hosts a webhook may reach though not public, comma-separated (BROKER_WEBHOOK_ALLOW); keep empty in Azure.')
param webhookAllow string = ''

@description('Tries of one webhook event at most (BROKER_WEBHOOK_TRIES).')
param webhookTries int = 6

@description('Seconds before the first webhook retry, doubling after (BROKER_WEBHOOK_BACKOFF_SECONDS).')
param webhookBackoffSeconds int = 60

@description('Seconds a webhook receiver has to answer (BROKER_WEBHOOK_TIMEOUT_SECONDS).')
param webhookTimeoutSeconds int = 10

@description('anonymous, or function: worker and operations routes also need the app\'s function key (BROKER_WORKER_AUTH_LEVEL).')
@allowed(['anonymous', 'function'])
param workerAuthLevel string = 'anonymous'

@description('Most instances the app scales out to.')
param maximumInstanceCount int = 40

@description('Memory per instance, MB (Flex Consumption bills it while any execution runs).')
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

var token = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
var storageName = toLower(take('st${replace(environmentName, '-', '')}${token}', 24))
var appName = 'func-${environmentName}-${token}'
var packageContainer = 'app-package'
var brokerContainers = ['inbox', 'outbox', 'uploads', 'signals']
var tags = {'azd-env-name': environmentName}

// Built-in role definitions (their ids are the same in every tenant).
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${environmentName}-${token}'
  location: location
  tags: tags
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {name: 'Standard_LRS'}
  properties: {
    allowSharedKeyAccess: false       // identities only: no key to leak, none to rotate
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    defaultToOAuthAuthentication: true
    // Workers and clients anywhere (a PC behind NAT, Colab) reach Blob storage with SAS URLs.
    publicNetworkAccess: 'Enabled'
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    cors: {
      corsRules: [
        {
          // The demo page PUTs large files to an upload URL and GETs large results from a download URL.
          allowedOrigins: ['https://${appName}.azurewebsites.net']
          allowedMethods: ['GET', 'HEAD', 'PUT', 'OPTIONS']
          allowedHeaders: ['*']
          exposedHeaders: ['*']
          maxAgeInSeconds: 3600
        }
      ]
    }
    deleteRetentionPolicy: {enabled: true, days: 7}
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for name in concat(brokerContainers, [packageContainer]): {
  parent: blobService
  name: name
  properties: {publicAccess: 'None'}
}]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: storage
  name: guid(storage.id, identity.id, storageBlobDataOwner)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource queueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: storage
  name: guid(storage.id, identity.id, storageQueueDataContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${environmentName}-${token}'
  location: location
  tags: tags
  properties: {
    sku: {name: 'PerGB2018'}
    retentionInDays: 30
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${environmentName}-${token}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-${environmentName}-${token}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {name: 'FC1', tier: 'FlexConsumption'}
  properties: {reserved: true}
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  tags: union(tags, {'azd-service-name': 'broker'})
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {'${identity.id}': {}}
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${packageContainer}'
          authentication: {type: 'UserAssignedIdentity', userAssignedIdentityResourceId: identity.id}
        }
      }
      scaleAndConcurrency: {maximumInstanceCount: maximumInstanceCount, instanceMemoryMB: instanceMemoryMB}
      runtime: {name: 'python', version: '3.11'}
    }
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [
        // Storage, identity-based (the Functions host and the broker read the same settings).
        {name: 'AzureWebJobsStorage__accountName', value: storage.name}
        {name: 'AzureWebJobsStorage__credential', value: 'managedidentity'}
        {name: 'AzureWebJobsStorage__clientId', value: identity.properties.clientId}
        {name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: insights.properties.ConnectionString}
        // The broker's own settings (README, "Configuration").
        {name: 'BROKER_WORKER_KEYS', value: workerKeys}
        {name: 'BROKER_CLIENT_KEYS', value: clientKeys}
        {name: 'BROKER_LEASE_SECRET', value: leaseSecret}
        {name: 'BROKER_MODELS', value: models}
        {name: 'BROKER_MAX_ATTEMPTS', value: string(maxAttempts)}
        {name: 'BROKER_MAX_PAYLOAD_BYTES', value: string(maxPayloadBytes)}
        {name: 'BROKER_RESULT_TTL_SECONDS', value: string(resultTtlSeconds)}
        {name: 'BROKER_QUEUED_TTL_SECONDS', value: string(queuedTtlSeconds)}
        {name: 'BROKER_CLEANUP_BATCH', value: string(cleanupBatch)}
        {name: 'BROKER_STORAGE_TIMEOUT_SECONDS', value: string(storageTimeoutSeconds)}
        {name: 'BROKER_MAX_CLAIM_BYTES', value: string(maxClaimBytes)}
        {name: 'BROKER_INLINE_BYTES', value: string(inlineBytes)}
        {name: 'BROKER_MAX_UPLOAD_BYTES', value: string(maxUploadBytes)}
        {name: 'BROKER_UPLOAD_SECONDS', value: string(uploadSeconds)}
        {name: 'BROKER_WORKER_AUTH_LEVEL', value: workerAuthLevel}
        {name: 'BROKER_RATE_LIMIT', value: rateLimit}
        {name: 'BROKER_WEBHOOK_SECRET', value: webhookSecret}
        {name: 'BROKER_WEBHOOK_ALLOW', value: webhookAllow}
        {name: 'BROKER_WEBHOOK_TRIES', value: string(webhookTries)}
        {name: 'BROKER_WEBHOOK_BACKOFF_SECONDS', value: string(webhookBackoffSeconds)}
        {name: 'BROKER_WEBHOOK_TIMEOUT_SECONDS', value: string(webhookTimeoutSeconds)}
      ]
      cors: {allowedOrigins: allowedOrigins, supportCredentials: false}
    }
  }
  dependsOn: [blobOwner, queueContributor, containers]
}

output AZURE_FUNCTION_APP_NAME string = app.name
output BROKER_URL string = 'https://${app.properties.defaultHostName}/api'
output STORAGE_ACCOUNT_NAME string = storage.name
output IDENTITY_CLIENT_ID string = identity.properties.clientId
