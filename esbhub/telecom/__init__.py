"""The telecom pack: simulated billing, resource-inventory, network-management, bank and CRM
systems sharing one ground truth (:mod:`esbhub.telecom.world`), the code steps and sink the
reference routes in ``routes/telecom/`` use, and the demo that drives traffic through the hub
(``esbhub serve --demo``, :mod:`esbhub.telecom.demo`). See docs/telecom-pack.md.
"""
