"""torch module -> OpenVINO model: the conversion step every family's export shares."""

from __future__ import annotations

import warnings

import torch

from .ov import ov


def trace_to_openvino(module: torch.nn.Module, inputs: tuple, shapes: list) -> ov.Model:
    """Trace ``module`` on ``inputs`` and convert it, with the inputs' ``shapes`` (-1: dynamic)."""
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about every Python value it records as a constant; the ones that
        # matter are caught by checking the export on photos of other sizes, which also makes
        # the tracer's own check (one more forward pass of the model) redundant.
        warnings.simplefilter("ignore")
        decoder = TorchScriptPythonDecoder(
            module.eval(), example_input=inputs, trace_kwargs={"check_trace": False}
        )
        return ov.convert_model(decoder, input=shapes)
