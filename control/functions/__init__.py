"""Reflow's deploy-then-call API ("dynASB"): functions deployed by REST, called over WebSocket.

A client ``POST``s a script to ``/api/v1/functions``, polls
``GET /api/v1/functions/{id}`` until its ``state`` is ``ready``, then opens the
WebSocket ``<ws base>/<id>`` and sends the ``process`` calls of the wire protocol;
``POST /api/v1/functions/{id}/undeploy`` removes it (``reflow-dynasb-api.md``).

Layout, sans-I/O cores first:

- :mod:`.model`: the request and response shapes, ids, the content digest;
- :mod:`.dependencies`: validating and normalising ``{"package": "version"}``;
- :mod:`.syntax`: the checker scripts that compile a function inside a sandbox;
- :mod:`.routes`: where the function id (and a token) sit in a WebSocket path;
- :mod:`.store`, :mod:`.store_redis`, :mod:`.store_sqlite`: functions in the state store,
  so every node of a cluster serves every function;
- :mod:`.installer`: pip / npm on the node into a cache shared by the node's sandboxes;
- :mod:`.service`: deploy, status, undeploy and the per-call lookup tied together;
- :mod:`.http_api`: the aiohttp routes; :mod:`.metrics`: their Prometheus metrics.
"""
