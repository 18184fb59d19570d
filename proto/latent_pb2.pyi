from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType

class GenerationSettings(_message.Message):
    __slots__ = ("solver", "steps", "schedule", "encode_schedule", "encode_steps")
    SOLVER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    ENCODE_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    ENCODE_STEPS_FIELD_NUMBER: _ClassVar[int]
    solver: str
    steps: int
    schedule: str
    encode_schedule: str
    encode_steps: int
    def __init__(self, solver: _Optional[str] = ..., steps: _Optional[int] = ..., schedule: _Optional[str] = ..., encode_schedule: _Optional[str] = ..., encode_steps: _Optional[int] = ...) -> None: ...

class LatentCode(_message.Message):
    __slots__ = ("format_version", "fingerprint", "image_shape", "basis", "group_boundaries", "group_of", "settings", "dtype", "count", "coefficients", "model_version")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    BASIS_FIELD_NUMBER: _ClassVar[int]
    GROUP_BOUNDARIES_FIELD_NUMBER: _ClassVar[int]
    GROUP_OF_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    COEFFICIENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    fingerprint: str
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    basis: str
    group_boundaries: _containers.RepeatedScalarFieldContainer[int]
    group_of: _containers.RepeatedScalarFieldContainer[int]
    settings: GenerationSettings
    dtype: DType
    count: int
    coefficients: bytes
    model_version: str
    def __init__(self, format_version: _Optional[int] = ..., fingerprint: _Optional[str] = ..., image_shape: _Optional[_Iterable[int]] = ..., basis: _Optional[str] = ..., group_boundaries: _Optional[_Iterable[int]] = ..., group_of: _Optional[_Iterable[int]] = ..., settings: _Optional[_Union[GenerationSettings, _Mapping]] = ..., dtype: _Optional[_Union[DType, str]] = ..., count: _Optional[int] = ..., coefficients: _Optional[bytes] = ..., model_version: _Optional[str] = ...) -> None: ...
