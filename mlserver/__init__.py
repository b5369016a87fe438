"""mlserver: the pull-based worker that serves a model through the broker.

It talks to the broker over HTTP only (see docs/API.md); it never imports `broker`.
"""
