"""`dark`: the operator's command line for the gateway's REST API (README's quick start)."""
