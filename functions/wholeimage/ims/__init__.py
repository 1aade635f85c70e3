"""IMS, one concern per module.

- ``client``: the port ``create`` uses and its httpx adapter: the call, retries, IMS's errors;
- ``auth``: AK/SK signing, a static token, an IAM password and its cached token;
- ``signer``: ``SDK-HMAC-SHA256``, byte for byte as the official SDK signs;
- ``endpoints`` and ``connection``: where IMS is and how we authenticate, from the settings;
- ``poller``: job queries for ``check``, each answer classified;
- ``keepalive``: the poller's transport, one h11 keep-alive connection per worker;
- ``job_report``: reading IMS's answer to a job query.
"""
