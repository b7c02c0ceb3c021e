# Type stubs for the compiled extension hypergpu._core.
# Kept honest by `python -m mypy.stubtest hypergpu._core` in `make test`.

from collections.abc import Sequence
from typing import Literal, final

from typing_extensions import Buffer

__version__: str

# ---- wire -------------------------------------------------------------------

FRAME_VERSION: int
HEADER_FIXED_LEN: int

@final
class TensorSpec:
    name: str
    dtype: str
    shape: list[int]
    nbytes: int
    def __new__(cls, name: str, dtype: str, shape: Sequence[int], nbytes: int) -> TensorSpec: ...

@final
class FrameHeader:
    kind: str
    codec: str
    zstd: bool
    round: int
    node_id: int
    tensors: list[TensorSpec]
    payload_len: int
    payload_crc: int
    header_len: int

def encode_frame(
    kind: str,
    payload: Buffer,
    *,
    round: int = 0,
    node_id: int = 0,
    codec: str = "raw",
    zstd: bool = False,
    tensors: Sequence[TensorSpec] = ...,
) -> bytes: ...
def decode_frame(data: Buffer, max_payload: int = ...) -> tuple[FrameHeader, int]: ...
def frame_header_len(data: Buffer) -> int: ...

# ---- aggregate ----------------------------------------------------------------

from typing import Any, final

import numpy as np
import numpy.typing as npt

def weighted_mean(
    updates: Sequence[npt.NDArray[Any]],
    weights: Sequence[float] | None = None,
    clip_norm: float | None = None,
    skip_nonfinite: bool = False,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], list[int], list[int], npt.NDArray[np.float64]]: ...
def coordinate_median(
    updates: Sequence[npt.NDArray[Any]], skip_nonfinite: bool = False
) -> tuple[npt.NDArray[np.float32], list[int]]: ...
def trimmed_mean(
    updates: Sequence[npt.NDArray[Any]], trim: float, skip_nonfinite: bool = False
) -> tuple[npt.NDArray[np.float32], list[int]]: ...
def krum(
    updates: Sequence[npt.NDArray[Any]], f: int, m: int = 1, skip_nonfinite: bool = False
) -> tuple[npt.NDArray[np.float32], list[int], npt.NDArray[np.float64], list[int]]: ...
def cosines(updates: Sequence[npt.NDArray[Any]], reference: npt.NDArray[Any]) -> npt.NDArray[np.float64]: ...

@final
class UpdateAccumulator:
    def __new__(cls, shape: Sequence[int]) -> UpdateAccumulator: ...
    def add(self, update: npt.NDArray[Any], weight: float = 1.0, clip_norm: float | None = None) -> float: ...
    def finalize(self) -> npt.NDArray[np.float32]: ...
    def reset(self) -> None: ...
    @property
    def count(self) -> int: ...
    @property
    def total_weight(self) -> float: ...
    @property
    def shape(self) -> list[int]: ...
    @property
    def dtype(self) -> str | None: ...

# ---- compress -----------------------------------------------------------------

from typing import Any as _Any

import numpy as _np
import numpy.typing as _npt

COMPRESS_MAX_BLOCK_SIZE: int
COMPRESS_DEFAULT_ZSTD_LEVEL: int

# codec: raw, fp16, bf16, int8, int4 or topk. residual: the error-feedback
# buffer of any codec but raw (float32, as many elements as update), updated
# in place.
def compress_encode(
    update: _Any,
    codec: str,
    *,
    block_size: int = 256,
    k: int | None = None,
    residual: _Any | None = None,
    zstd: bool = False,
    zstd_level: int = ...,
) -> bytes: ...
def compress_decode(
    payload: Buffer, codec: str, *, zstd: bool = False, numel: int | None = None
) -> _npt.NDArray[_np.float32]: ...
def compress_encoded_len(
    codec: str, numel: int, *, block_size: int = 256, k: int | None = None
) -> int: ...

# ---- transport ----------------------------------------------------------------

from collections.abc import Awaitable, Mapping
from typing import Any, ClassVar, final

LINK_PROFILES: list[str]

@final
class LinkShape:
    def __new__(
        cls,
        *,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
        jitter_dist: str = "uniform",
        loss: float = 0.0,
        burst_loss: Mapping[str, float] | None = None,
        bandwidth_bps: int | None = None,
        queue_bytes: int = ...,
        reorder: bool = False,
        outages: Sequence[tuple[float, float]] = ...,
        schedule: Sequence[tuple[float, LinkShape]] = ...,
        seed: int = 0,
    ) -> LinkShape: ...
    @staticmethod
    def profile(name: str, *, seed: int = 0) -> LinkShape: ...
    @staticmethod
    def asymmetric(egress: LinkShape, ingress: LinkShape, *, seed: int = 0) -> LinkShape: ...
    def with_outages(self, outages: Sequence[tuple[float, float]]) -> LinkShape: ...
    def with_schedule(self, schedule: Sequence[tuple[float, LinkShape]]) -> LinkShape: ...
    def with_seed(self, seed: int) -> LinkShape: ...
    def simulate(self, datagrams: Sequence[tuple[float, int]], direction: str = "egress") -> list[float | str]: ...
    @property
    def seed(self) -> int: ...
    @property
    def is_transparent(self) -> bool: ...
    def to_dict(self) -> dict[str, Any]: ...
    def __eq__(self, other: object, /) -> bool: ...
    __hash__: ClassVar[None]  # type: ignore[assignment]

@final
class TransportConfig:
    """Settings both ends of a link take; every one has a default that works on a laptop."""
    def __new__(
        cls,
        *,
        max_message_bytes: int = ...,
        idle_timeout: float = ...,
        handshake_timeout: float = ...,
        ping_interval: float = ...,
        recv_queue: int = ...,
        segmentation_offload: bool = ...,
        hello_timeout: float | None = None,
        max_pending: int = ...,
        max_pending_per_address: int = ...,
        retry_above: int = ...,
        congestion: Literal["cubic", "new_reno", "bbr"] = ...,
    ) -> TransportConfig: ...
    @property
    def max_message_bytes(self) -> int: ...
    @property
    def idle_timeout(self) -> float: ...
    @property
    def handshake_timeout(self) -> float: ...
    @property
    def ping_interval(self) -> float: ...
    @property
    def recv_queue(self) -> int: ...
    @property
    def segmentation_offload(self) -> bool: ...
    @property
    def hello_timeout(self) -> float | None: ...
    @property
    def max_pending(self) -> int: ...
    @property
    def max_pending_per_address(self) -> int: ...
    @property
    def retry_above(self) -> int: ...
    @property
    def congestion(self) -> Literal["cubic", "new_reno", "bbr"]: ...

@final
class LinkStats:
    """One link's metrics; byte and packet counts are cumulative since it opened."""
    def __new__(
        cls,
        *,
        age_s: float = 0.0,
        srtt_ms: float = 0.0,
        rtt_samples_ms: Sequence[float] = ...,
        bytes_sent: int = 0,
        bytes_received: int = 0,
        messages_sent: int = 0,
        messages_received: int = 0,
        goodput_bps: float = 0.0,
        send_goodput_bps: float = 0.0,
        refused_too_large: int = 0,
        refused_by_peer: int = 0,
        unacked_messages: int = 0,
        udp_bytes_sent: int = 0,
        udp_bytes_received: int = 0,
        udp_datagrams_sent: int = 0,
        udp_datagrams_received: int = 0,
        sent_packets: int = 0,
        lost_packets: int = 0,
        lost_bytes: int = 0,
        congestion_events: int = 0,
        cwnd: int = 0,
        mtu: int = 0,
        shaper_drops: Mapping[str, Mapping[str, int]] | None = None,
        shaper: Mapping[str, Mapping[str, int]] | None = None,
    ) -> LinkStats: ...
    @property
    def age_s(self) -> float: ...
    @property
    def srtt_ms(self) -> float: ...
    @property
    def rtt_samples_ms(self) -> list[float]: ...
    @property
    def bytes_sent(self) -> int: ...
    @property
    def bytes_received(self) -> int: ...
    @property
    def messages_sent(self) -> int: ...
    @property
    def messages_received(self) -> int: ...
    @property
    def goodput_bps(self) -> float: ...
    @property
    def send_goodput_bps(self) -> float: ...
    @property
    def refused_too_large(self) -> int: ...
    @property
    def refused_by_peer(self) -> int: ...
    @property
    def unacked_messages(self) -> int: ...
    @property
    def udp_bytes_sent(self) -> int: ...
    @property
    def udp_bytes_received(self) -> int: ...
    @property
    def udp_datagrams_sent(self) -> int: ...
    @property
    def udp_datagrams_received(self) -> int: ...
    @property
    def sent_packets(self) -> int: ...
    @property
    def lost_packets(self) -> int: ...
    @property
    def lost_bytes(self) -> int: ...
    @property
    def congestion_events(self) -> int: ...
    @property
    def cwnd(self) -> int: ...
    @property
    def mtu(self) -> int: ...
    @property
    def shaper_drops(self) -> dict[str, dict[str, int]]:
        """Datagrams the shaper dropped: ``{"egress"|"ingress": {cause: count}}``."""
    @property
    def shaper(self) -> dict[str, dict[str, int]]:
        """Datagrams and bytes through the shaper: ``{"egress"|"ingress": {"packets", "bytes", "delivered_packets", "delivered_bytes"}}``."""
    def as_dict(self) -> dict[str, Any]: ...

def transport_identity() -> tuple[bytes, bytes]: ...
@final
class TransportServer:
    @staticmethod
    def listen(
        host: str,
        port: int,
        *,
        token: str,
        name: str = ...,
        shape: LinkShape | None = None,
        config: TransportConfig | None = None,
        identity: tuple[bytes, bytes] | None = None,
    ) -> Awaitable[TransportServer]: ...
    @property
    def join_string(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def address(self) -> tuple[str, int]: ...
    def accept(self, timeout: float | None = None) -> Awaitable[TransportConnection]: ...
    def rejections(self) -> list[dict[str, Any]]: ...
    @property
    def rejection_count(self) -> int: ...
    def admission(self) -> dict[str, int]: ...
    def set_default_shape(self, shape: LinkShape) -> None: ...
    def close(self) -> Awaitable[None]: ...

@final
class TransportConnection:
    @property
    def peer_name(self) -> str: ...
    @property
    def remote_address(self) -> tuple[str, int]: ...
    @property
    def peer_max_message_bytes(self) -> int: ...
    @property
    def is_closed(self) -> bool: ...
    @property
    def challenge(self) -> bytes: ...
    def authorize(self) -> None: ...
    @property
    def is_authorized(self) -> bool: ...
    def send(self, frame: Buffer, timeout: float | None = None, *, acked: bool = False) -> Awaitable[None]: ...
    def send_unchecked(self, frame: Buffer, timeout: float | None = None, *, acked: bool = False) -> Awaitable[None]: ...
    def recv(self, timeout: float | None = None) -> Awaitable[bytes]: ...
    def stats(self) -> LinkStats: ...
    def set_shape(self, shape: LinkShape) -> None: ...
    @property
    def shape(self) -> LinkShape: ...
    def close(self, reason: str = ..., *, refused: bool = False) -> Awaitable[None]: ...

def transport_connect(
    join: str,
    *,
    token: str,
    name: str,
    shape: LinkShape | None = None,
    config: TransportConfig | None = None,
) -> Awaitable[TransportConnection]: ...
def transport_strangers(
    join: str,
    *,
    count: int = 1,
    token: str | None = None,
    streams: int = 1,
    bytes_per_stream: int = 0,
    hold: float = 10.0,
) -> Awaitable[list[dict[str, Any]]]: ...
