"""The broker: an Azure Functions app that stores jobs in blobs and leases them through queues."""
