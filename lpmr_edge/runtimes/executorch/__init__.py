"""The ExecuTorch (XNNPACK) backend: ``loader`` (shipped to devices), ``runtime`` (host), ``export``."""
