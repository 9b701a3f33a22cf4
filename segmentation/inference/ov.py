"""``openvino``, imported without its usage telemetry.

Importing ``openvino`` (and every ``convert_model``) reports to Google Analytics unless the user
opted out in a file under their home directory: it is opt-out, and it writes ``~/intel/`` on
first use. A self-hosted service must not phone home. OpenVINO's converter falls back to its own
no-op stub when ``openvino_telemetry`` cannot be imported, so we make that import fail while
``openvino`` loads (and only then: ``openvino_telemetry`` stays importable for anyone else).

Import ``ov`` from here, never ``openvino`` directly, in the engine. Nothing the web process
imports may import this module.
"""

from __future__ import annotations

import sys

_TELEMETRY = "openvino_telemetry"

if "openvino" in sys.modules:  # someone imported it first: nothing left to prevent
    import openvino as ov
else:
    _saved = sys.modules.get(_TELEMETRY)
    sys.modules[_TELEMETRY] = None  # type: ignore[assignment]  # None makes the import fail
    try:
        import openvino as ov
    finally:
        if _saved is None:
            del sys.modules[_TELEMETRY]
        else:
            sys.modules[_TELEMETRY] = _saved

__all__ = ["ov"]
