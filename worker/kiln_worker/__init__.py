"""kiln's GPU worker: runs image-to-3D jobs (TRELLIS.2 by default) for kiln.

It speaks kiln's worker protocol, version 1 (docs/worker-protocol.md in the kiln
repository): kiln dispatches a job with a signed `POST /generate3d`, the worker answers
202 at once, runs the job in the background and reports back with signed `progress`,
`result` and `status` callbacks.
"""

__version__ = "0.1.0"

#: The worker protocol version this package speaks, announced by `GET /health`.
PROTOCOL_VERSION = 1

__all__ = ["PROTOCOL_VERSION", "__version__"]
