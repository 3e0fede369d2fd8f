"""Domain code shared by the streamer, the Lambda functions and the local stack."""
