"""CDK entry point; the stack lives in `infra/` (filled in by the CDK issue)."""
