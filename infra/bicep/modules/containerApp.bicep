// One container app. Generic on purpose: main.bicep deploys with it the GPU endpoint (the single layout), or
// the CPU front with the ingress and the GPU workers with a queue scale rule and no ingress (the split layout).

@description('Azure region.')
param location string

@description('App name: lowercase letters, digits and hyphens, at most 32.')
@maxLength(32)
param name string

@description('Container Apps environment id.')
param environmentId string

@description('Workload profile the app runs on (a GPU profile for the generator).')
param workloadProfileName string

@description('User-assigned identity resource id: it pulls the image and is AZURE_CLIENT_ID in the app.')
param identityId string

@description('Registry login server, pulled from with the identity.')
param registryServer string

@description('Full image reference, e.g. myregistry.azurecr.io/noisett-mcp:<git sha>.')
param image string

@description('vCPUs (a string, e.g. \'24\' or \'0.5\').')
param cpu string

@description('Memory, e.g. \'220Gi\'.')
param memory string

@description('Command; empty: the image\'s CMD.')
param command array = []

@description('Plain environment variables: [{ name, value }].')
param env array = []

@description('Secrets, { secret-name: value }: each becomes an app secret, referenced from env with secretRef.')
@secure()
param secrets object = {}

@description('Environment variables read from secrets: [{ name, secretRef }].')
param secretEnv array = []

@description('Serve HTTP through ingress (false: a worker with no ingress).')
param ingressEnabled bool = true

@description('Ingress reachable from the internet (false: only inside the environment).')
param external bool = true

@description('Port the container listens on.')
param targetPort int = 8000

@description('Browser origins allowed by CORS; empty: no CORS policy.')
param corsOrigins array = []

@description('Path of the health endpoint used by the startup, liveness and readiness probes.')
param healthPath string = '/healthz'

@description('Port of the health endpoint; 0: no probes. A worker without ingress serves its own health port.')
@minValue(0)
@maxValue(65535)
param healthPort int = targetPort

@description('''Multiple: each deploy keeps the previous revisions for a traffic-switch rollback (they scale to
zero only with minReplicas 0). Single: the new revision replaces the old one once it is ready; for apps kept
warm (minReplicas above 0) and for queue-scaled workers, whose old revisions would otherwise keep running.''')
@allowed([
  'Multiple'
  'Single'
])
param revisionsMode string = 'Multiple'

@description('Replicas kept while idle; 0 scales to zero.')
@minValue(0)
param minReplicas int = 0

@description('Most replicas (each one takes a whole GPU on a GPU profile).')
@minValue(1)
param maxReplicas int = 1

@description('Concurrent HTTP requests per replica before another replica is added (with ingress).')
@minValue(1)
param concurrentRequests int = 4

@description('More scale rules, e.g. an azure-queue rule for GPU workers.')
param extraScaleRules array = []

@description('Environment storage (Azure Files) to mount; empty: none.')
param volumeStorageName string = ''

@description('Where the volume is mounted in the container.')
param volumeMountPath string = '/mnt/model-cache'

@description('SMB mount options: owned by the image\'s user (uid 10001); mfsymlinks for the Hugging Face cache\'s links.')
param volumeMountOptions string = 'uid=10001,gid=10001,mfsymlinks,nobrl'

@description('Seconds a replica may take to stop after SIGTERM: a GPU worker finishes the job in hand.')
param terminationGracePeriodSeconds int = 30

param tags object = {}

var volumeName = 'model-cache'
var hasVolume = !empty(volumeStorageName)
var httpRule = {
  name: 'http-concurrency'
  http: {
    metadata: {
      concurrentRequests: string(concurrentRequests)
    }
  }
}
var corsPolicy = {
  allowedOrigins: corsOrigins
  allowedMethods: [
    'GET'
    'POST'
    'DELETE'
    'OPTIONS'
  ]
  allowedHeaders: [
    'Authorization'
    'Content-Type'
    'Mcp-Session-Id'
    'Mcp-Protocol-Version'
    'Last-Event-ID'
  ]
  exposeHeaders: [
    'Mcp-Session-Id'
    'WWW-Authenticate'
  ]
  maxAge: 600
}
var ingress = {
  external: external
  targetPort: targetPort
  transport: 'http'
  allowInsecure: false
  traffic: [
    {
      latestRevision: true
      weight: 100
    }
  ]
  corsPolicy: empty(corsOrigins) ? null : corsPolicy
}
var probeTarget = {
  path: healthPath
  port: healthPort
  scheme: 'HTTP'
}
// /healthz answers 200 while the model loads ("loading") and 503 only once loading failed, so the startup
// probe waits for the server to listen, not for the model: measured at under 2 s from process start
// (benchmarks/bench_startup.py). A check every 2 s from the first second passes within 2 s of it, and 10
// failures (21 s) allow 10 times the measured start before the replica is restarted. The old window (a
// check a minute, ten minutes) added up to a minute to every cold start. A replica whose model failed to
// load answers 503 and is restarted by the liveness probe.
var probes = [
  {
    type: 'Startup'
    httpGet: probeTarget
    initialDelaySeconds: 1
    periodSeconds: 2
    timeoutSeconds: 2
    failureThreshold: 10
  }
  {
    type: 'Liveness'
    httpGet: probeTarget
    periodSeconds: 30
    timeoutSeconds: 5
    failureThreshold: 3
  }
  {
    type: 'Readiness'
    httpGet: probeTarget
    periodSeconds: 5
    timeoutSeconds: 5
    failureThreshold: 3
  }
]
var volumeMounts = [
  {
    volumeName: volumeName
    mountPath: volumeMountPath
  }
]
var volumes = [
  {
    name: volumeName
    storageType: 'AzureFile'
    storageName: volumeStorageName
    mountOptions: volumeMountOptions
  }
]

resource app 'Microsoft.App/containerApps@2025-01-01' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    environmentId: environmentId
    workloadProfileName: workloadProfileName
    configuration: {
      // Multiple: every deploy makes a revision and moves all traffic to it; the previous ones stay for
      // an instant rollback (docs/deploy.md). Single: the new revision replaces the old one.
      activeRevisionsMode: revisionsMode
      maxInactiveRevisions: 10
      registries: [
        {
          server: registryServer
          identity: identityId
        }
      ]
      secrets: [
        for secret in items(secrets): {
          name: secret.key
          value: secret.value
        }
      ]
      ingress: ingressEnabled ? ingress : null
    }
    template: {
      terminationGracePeriodSeconds: terminationGracePeriodSeconds
      containers: [
        {
          name: 'app'
          image: image
          command: empty(command) ? null : command
          resources: {
            cpu: json(cpu)
            memory: memory
          }
          env: concat(env, secretEnv)
          probes: healthPort == 0 ? [] : probes
          volumeMounts: hasVolume ? volumeMounts : []
        }
      ]
      volumes: hasVolume ? volumes : []
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: concat(ingressEnabled ? [httpRule] : [], extraScaleRules)
      }
    }
  }
}

output name string = app.name
output id string = app.id
output fqdn string = ingressEnabled ? app.properties.configuration.ingress.fqdn : ''
output latestRevisionName string = app.properties.latestRevisionName
