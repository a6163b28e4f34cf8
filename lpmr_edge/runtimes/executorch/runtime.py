"""ExecuTorch runtime: a verified .pte artifact in the ExecuTorch Python runtime (XNNPACK backend), by ``loader``.

The threadpool is process-wide (see ``loader``): the last runtime opened in a process sets its size for all of
them, and ``describe()`` reads the size back.
"""
from __future__ import annotations

import platform

from lpmr_edge.artifact import verify_reference_outputs
from lpmr_edge.runtimes.artifact_runtime import ArtifactRuntime
from lpmr_edge.runtimes.executorch import loader


class ExecuTorchRuntime(ArtifactRuntime):
    """Both towers of an ExecuTorch artifact, each a ``forward`` method of its .pte program."""

    name = "executorch"
    loader = loader

    def current_threads(self) -> int:
        from executorch.extension.pybindings import portable_lib

        return portable_lib._threadpool_get_thread_count()

    def verify_outputs(self) -> dict[str, dict[str, float]]:
        """Run the artifact's reference inputs and compare with the outputs recorded at export.

        Returns the agreement per tower; raises UserError when a tower is outside the manifest's tolerance.
        """
        return verify_reference_outputs(self.artifact_dir, self.manifest, self._run, f"this {platform.machine()} CPU")
