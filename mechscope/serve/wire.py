"""Constants both ends of the wire agree on: protocol version, headers and size limits."""

from __future__ import annotations

PROTOCOL_VERSION = 2
PROTOCOL_HEADER = "mechscope-protocol"
CLIENT_HEADER = "mechscope-client"  # a random id per connected client: jobs and cancels are keyed by it
CLIENT_NAME_HEADER = "mechscope-client-name"  # shown to other clients ("alice's sweep running 40%")
MAX_REQUEST_BYTES = 16 * 1024 * 1024  # a request body; steering vectors of the widest models fit
HEARTBEAT_SECONDS = 0.2  # a running job's stream sends at least one line this often
FRAME_TYPE = "application/x-mechscope-frames"  # JSON lines, each followed by its arrays' raw bytes
