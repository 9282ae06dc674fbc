from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Begin(_message.Message):
    __slots__ = ("version", "session", "images", "bytes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    version: int
    session: str
    images: int
    bytes: int
    def __init__(self, version: _Optional[int] = ..., session: _Optional[str] = ..., images: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("snapshot_id", "name", "size", "crc32c")
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CRC32C_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    name: str
    size: int
    crc32c: int
    def __init__(self, snapshot_id: _Optional[str] = ..., name: _Optional[str] = ..., size: _Optional[int] = ..., crc32c: _Optional[int] = ...) -> None: ...

class End(_message.Message):
    __slots__ = ("images", "bytes", "manifest_sha256")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    images: int
    bytes: int
    manifest_sha256: bytes
    def __init__(self, images: _Optional[int] = ..., bytes: _Optional[int] = ..., manifest_sha256: _Optional[bytes] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class FetchMessage(_message.Message):
    __slots__ = ("begin", "image", "end", "error")
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    begin: Begin
    image: Image
    end: End
    error: Error
    def __init__(self, begin: _Optional[_Union[Begin, _Mapping]] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., end: _Optional[_Union[End, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...
