"""What stands in for AWS and DhanHQ on a laptop. Production code never imports this package."""
