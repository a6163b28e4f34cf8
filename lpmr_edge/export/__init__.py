"""Export deployable artifacts: one directory per (target, runtime, precision) with a manifest.

Artifact layout::

    <out_root>/<target>/<runtime>-<precision>/
        image.<ext>, text.<ext>   the two towers (OpenVINO .xml+.bin, ExecuTorch .pte)
        manifest.json             see ``write_artifact_manifest``

Backend contract (``lpmr_edge/export/openvino.py``, ``lpmr_edge/export/executorch.py``)::

    def export_towers(clip: ClipModel, request: ExportRequest, calibration: CalibrationInputs,
                      staging_dir: Path) -> dict

writes the tower files into ``staging_dir`` and returns the backend's manifest fields:
``towers`` ({"image": {"file", "inputs": [{"name","shape","dtype"}], "outputs": [...]}, "text": ...}),
``runtime_config`` (what the runtime must set on load, e.g. INFERENCE_PRECISION_HINT),
``quantization`` (the parameters actually used), ``warnings`` (list of str) and any extras
(e.g. ``delegation`` for ExecuTorch). The common code here adds model, target, calibration,
file hashes and tool versions, and moves the staged directory into place atomically.
"""
