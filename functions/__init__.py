"""Lambda entry points: api (FastAPI + Mangum), ws, fanout, schedule."""
