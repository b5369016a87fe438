"""What tests in several folders share: the route tables (routes.py), pollers that wait for a
task's end (polling.py), and two proxies between a client and the broker: a TCP relay that can
lose answers (relay.py) and an HTTP proxy that records every put (recording_proxy.py)."""
