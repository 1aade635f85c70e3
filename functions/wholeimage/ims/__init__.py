"""IMS: the client, its authentication and signer, endpoints, the job poller and job answers."""
