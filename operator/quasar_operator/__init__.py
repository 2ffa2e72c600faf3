"""The QUASAR Kubernetes operator (kopf).

It lives in the `operator/` folder but imports as `quasar_operator`: a package named `operator` would
shadow the standard library module of that name.
"""
