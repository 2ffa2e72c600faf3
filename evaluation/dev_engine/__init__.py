"""The development inference engine (`quasar engine serve`): a transformers model behind the HTTP APIs that
production engines speak, for mock mode, tests and local runs. See docs/engine.md."""
