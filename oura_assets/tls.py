"""One TLS context per process for every httpx client this package makes: `verify=tls_context()`.

Why: httpx builds a new `ssl.SSLContext` for each client it creates unless it is handed one, and loading the
CA bundle into it costs 25-30 ms of CPU. This package made one for each OAuth token request (authlib's
`OAuth2Client` is a new httpx client each time), each `OuraClient`, `WebhookClient` and JWKS fetcher made
without a shared client, each readiness poll of a server it starts, and each webhook the simulator sends:
744 contexts, 22.8 s of CPU, in four of the test suite's modules. A context may be shared by any number of
clients and threads. This one is made the way httpx makes its default (`httpx.create_ssl_context()`: certifi's
CA bundle, or SSL_CERT_FILE / SSL_CERT_DIR when set), once, when first asked for; a child process made by fork
shares it too.
"""

import functools
import ssl

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    """This process's TLS context for httpx clients (made on first use, then the same one)."""
    return httpx.create_ssl_context()
