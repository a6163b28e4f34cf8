"""Runtimes behind one interface (``base.Runtime``): the torch reference (``torch_runtime``) and one folder per
artifact backend (``<name>/``: loader, runtime, export) recorded in ``registry``; ``factory.open_runtime``
opens any of them, in this process or on a device. Importing this package imports nothing."""
