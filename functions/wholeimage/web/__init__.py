"""The HTTP edge: the only package that knows Flask. One module per function (``create``,
``check``, ``notify``) over the shared request and answer handling in ``http``, so a function's
process imports only its own use cases."""
