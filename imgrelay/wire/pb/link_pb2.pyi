from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OpenMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CREATE: _ClassVar[OpenMode]
    REPLACE: _ClassVar[OpenMode]
    APPEND: _ClassVar[OpenMode]

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RAW: _ClassVar[Encoding]
    ZSTD: _ClassVar[Encoding]
    LZ4: _ClassVar[Encoding]
CREATE: OpenMode
REPLACE: OpenMode
APPEND: OpenMode
RAW: Encoding
ZSTD: Encoding
LZ4: Encoding

class Hello(_message.Message):
    __slots__ = ("version", "session", "resume_token", "resume", "window", "verdict")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    version: int
    session: str
    resume_token: bytes
    resume: bool
    window: int
    verdict: bool
    def __init__(self, version: _Optional[int] = ..., session: _Optional[str] = ..., resume_token: _Optional[bytes] = ..., resume: _Optional[bool] = ..., window: _Optional[int] = ..., verdict: _Optional[bool] = ...) -> None: ...

class ImageOpen(_message.Message):
    __slots__ = ("image", "name", "snapshot_id", "mode")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    image: int
    name: str
    snapshot_id: str
    mode: OpenMode
    def __init__(self, image: _Optional[int] = ..., name: _Optional[str] = ..., snapshot_id: _Optional[str] = ..., mode: _Optional[_Union[OpenMode, str]] = ...) -> None: ...

class SnapshotPush(_message.Message):
    __slots__ = ("snapshot_id",)
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    def __init__(self, snapshot_id: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("image", "length", "encoding", "size")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    image: int
    length: int
    encoding: Encoding
    size: int
    def __init__(self, image: _Optional[int] = ..., length: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., size: _Optional[int] = ...) -> None: ...

class ImageClose(_message.Message):
    __slots__ = ("image", "size", "crc32c")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CRC32C_FIELD_NUMBER: _ClassVar[int]
    image: int
    size: int
    crc32c: int
    def __init__(self, image: _Optional[int] = ..., size: _Optional[int] = ..., crc32c: _Optional[int] = ...) -> None: ...

class Done(_message.Message):
    __slots__ = ("images", "bytes", "manifest_sha256")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    images: int
    bytes: int
    manifest_sha256: bytes
    def __init__(self, images: _Optional[int] = ..., bytes: _Optional[int] = ..., manifest_sha256: _Optional[bytes] = ...) -> None: ...

class Abort(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Commit(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProxyMessage(_message.Message):
    __slots__ = ("hello", "open", "chunk", "close", "done", "abort", "snapshot", "commit")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    open: ImageOpen
    chunk: Chunk
    close: ImageClose
    done: Done
    abort: Abort
    snapshot: SnapshotPush
    commit: Commit
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., open: _Optional[_Union[ImageOpen, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., close: _Optional[_Union[ImageClose, _Mapping]] = ..., done: _Optional[_Union[Done, _Mapping]] = ..., abort: _Optional[_Union[Abort, _Mapping]] = ..., snapshot: _Optional[_Union[SnapshotPush, _Mapping]] = ..., commit: _Optional[_Union[Commit, _Mapping]] = ...) -> None: ...

class ImageProgress(_message.Message):
    __slots__ = ("image", "bytes")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    image: int
    bytes: int
    def __init__(self, image: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class Accept(_message.Message):
    __slots__ = ("received", "open_images", "heartbeat", "encodings", "restores")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    OPEN_IMAGES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    RESTORES_FIELD_NUMBER: _ClassVar[int]
    received: int
    open_images: _containers.RepeatedCompositeFieldContainer[ImageProgress]
    heartbeat: float
    encodings: _containers.RepeatedScalarFieldContainer[Encoding]
    restores: bool
    def __init__(self, received: _Optional[int] = ..., open_images: _Optional[_Iterable[_Union[ImageProgress, _Mapping]]] = ..., heartbeat: _Optional[float] = ..., encodings: _Optional[_Iterable[_Union[Encoding, str]]] = ..., restores: _Optional[bool] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("received",)
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    received: int
    def __init__(self, received: _Optional[int] = ...) -> None: ...

class Refuse(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ImageAck(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: int
    def __init__(self, image: _Optional[int] = ...) -> None: ...

class ImageRefused(_message.Message):
    __slots__ = ("image", "reason")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    image: int
    reason: str
    def __init__(self, image: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class DoneOk(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SessionFailed(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("restored", "pid", "status", "reason", "log_tail", "seconds")
    RESTORED_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LOG_TAIL_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    restored: bool
    pid: int
    status: int
    reason: str
    log_tail: str
    seconds: float
    def __init__(self, restored: _Optional[bool] = ..., pid: _Optional[int] = ..., status: _Optional[int] = ..., reason: _Optional[str] = ..., log_tail: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class Resolved(_message.Message):
    __slots__ = ("running", "seconds")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    running: bool
    seconds: float
    def __init__(self, running: _Optional[bool] = ..., seconds: _Optional[float] = ...) -> None: ...

class CacheMessage(_message.Message):
    __slots__ = ("accept", "refuse", "ack", "image_refused", "done_ok", "failed", "progress", "verdict", "resolved")
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    REFUSE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    IMAGE_REFUSED_FIELD_NUMBER: _ClassVar[int]
    DONE_OK_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    accept: Accept
    refuse: Refuse
    ack: ImageAck
    image_refused: ImageRefused
    done_ok: DoneOk
    failed: SessionFailed
    progress: Progress
    verdict: Verdict
    resolved: Resolved
    def __init__(self, accept: _Optional[_Union[Accept, _Mapping]] = ..., refuse: _Optional[_Union[Refuse, _Mapping]] = ..., ack: _Optional[_Union[ImageAck, _Mapping]] = ..., image_refused: _Optional[_Union[ImageRefused, _Mapping]] = ..., done_ok: _Optional[_Union[DoneOk, _Mapping]] = ..., failed: _Optional[_Union[SessionFailed, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ..., resolved: _Optional[_Union[Resolved, _Mapping]] = ...) -> None: ...
