"""The quotes Lambda (`functions.quotes.handler`): the DhanHQ REST fallback of the HTTP API.

Private: no API route; only the HTTP API's function may invoke it (synchronously, through
`functions.api.quotes.RemoteQuotes`), and it is the only function of a price request that can
read the Dhan secret, so the public API function never holds a token that can also place
orders. Event and answer are `functions.quotes.contract`'s: at most 1,000 screened misses and
the caller in, the `FetchResult` out; the work is `functions.quotes.fetch.fetch_quotes`, the
same function the API runs in-process when no quotes function is configured (the local run).
"""

from __future__ import annotations

from typing import Any


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    from functions.quotes.wiring import handle

    return dict(handle(event, context))
