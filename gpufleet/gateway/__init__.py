"""The OpenAI-compatible gateway: one endpoint for every deployment.

``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/rerank`` and
``GET /v1/models``; ``"model"`` names the deployment, and the request goes to one of its
RUNNING replicas that is not being removed (least outstanding requests first). The same
routes are served by the gpufleet server (:func:`gpufleet.gateway.routes.add_gateway`) and
by separate ``gpufleet gateway`` processes that read the routing table from the server's
API, so the gateway scales out without touching the database. See docs/gateway.md.

Modules, one job each: ``settings`` (the knobs), ``errors`` (the OpenAI error shape),
``table`` (the routing table and its cache), ``sources`` (where a table comes from),
``balancer`` (least outstanding requests), ``upstream`` (the pooled HTTP client, retries,
streaming), ``metrics`` (what Prometheus sees), ``routes`` (the HTTP handlers).
"""
