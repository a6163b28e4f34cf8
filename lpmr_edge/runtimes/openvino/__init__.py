"""The OpenVINO backend: ``loader`` (shipped to devices), ``runtime`` (host), ``export``, ``options``."""
