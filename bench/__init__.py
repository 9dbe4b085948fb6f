"""``python -m bench``: kvassert side by side with msal and azure-identity on the emulator.

One run starts the in-process emulator with injected latency, sets up one app registration (a
local certificate and a Key Vault certificate), five APIs and a least-privilege managed
identity, runs the scenarios in ``bench.scenarios`` against kvassert and the peers in
``bench.peers``, and prints a markdown table (``bench.report``) and writes JSON.
"""
