"""Notification channels: one module per service over shared rendering, escaping and classification.

Where things are:

- ``base``: the ``Target`` protocol and its types (``OutgoingMessage``, ``Delivery``,
  ``RateLimit``);
- ``text`` (what every message says), ``escape`` (each service's escaping), ``render``
  (markup dialects, the JSON on the wire, the ``ChatTarget`` base), ``classify`` (reading an
  answer), ``attachments`` (the payload Mattermost and Rocket.Chat share);
- one module per service: ``slack``, ``teams``, ``discord``, ``googlechat``, ``mattermost``,
  ``rocketchat``, ``feishu``, ``dingtalk``, ``wecom``, ``standard`` (Standard Webhooks);
- ``registry``: ``CHANNEL_TARGETS`` and ``target_for``;
- ``formats``, ``urls`` and ``sinks``: the format names, what a URL says (its format, a retired
  Teams connector, a loggable stand-in) and the local ``console:``/``file:`` channels, in the
  standard library only, so that settings can use them without loading any service.

Services import the shared modules; shared modules never import a service; only ``registry``
imports them all. This file imports nothing, so that ``formats``, ``urls`` and ``sinks`` stay
cheap.

A new service is a new module with its target (usually a ``render.ChatTarget``), one line in
``registry``, its name in ``formats.ChannelFormat`` (a unit test checks that the two agree) and,
when its webhook host is recognisable, that host in ``urls``. Service behaviour is described in
``docs/webhooks.md``.
"""
