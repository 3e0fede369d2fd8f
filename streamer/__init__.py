"""The Fargate service: DhanHQ Live Market Feed v2 -> Redis cache and Pub/Sub."""
