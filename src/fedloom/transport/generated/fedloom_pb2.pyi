from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    PROPERTIES: _ClassVar[Kind]
    FIT: _ClassVar[Kind]
    EVALUATE: _ClassVar[Kind]
    RECONNECT: _ClassVar[Kind]
    EXIT: _ClassVar[Kind]
    MESSAGE: _ClassVar[Kind]
    PROPERTIES_REPLY: _ClassVar[Kind]
    FIT_REPLY: _ClassVar[Kind]
    EVALUATE_REPLY: _ClassVar[Kind]
    FAILURE: _ClassVar[Kind]
    REJECTED: _ClassVar[Kind]
    MESSAGE_REPLY: _ClassVar[Kind]
KIND_UNSPECIFIED: Kind
PROPERTIES: Kind
FIT: Kind
EVALUATE: Kind
RECONNECT: Kind
EXIT: Kind
MESSAGE: Kind
PROPERTIES_REPLY: Kind
FIT_REPLY: Kind
EVALUATE_REPLY: Kind
FAILURE: Kind
REJECTED: Kind
MESSAGE_REPLY: Kind

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape", "nbytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    nbytes: int
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., nbytes: _Optional[int] = ...) -> None: ...

class TrainConfig(_message.Message):
    __slots__ = ("epochs", "steps", "batch_size", "lr", "momentum", "weight_decay")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    steps: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    def __init__(self, epochs: _Optional[int] = ..., steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., momentum: _Optional[float] = ..., weight_decay: _Optional[float] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ("total", "weight")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    total: float
    weight: float
    def __init__(self, total: _Optional[float] = ..., weight: _Optional[float] = ...) -> None: ...

class Scalar(_message.Message):
    __slots__ = ("number", "integer", "text", "flag")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    number: float
    integer: int
    text: str
    flag: bool
    def __init__(self, number: _Optional[float] = ..., integer: _Optional[int] = ..., text: _Optional[str] = ..., flag: _Optional[bool] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("task_id", "kind", "round", "client_id", "tensors", "payload_bytes", "config", "num_examples", "num_steps", "metrics", "values", "reason", "seconds", "bulk", "msg_type")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Metric
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Metric, _Mapping]] = ...) -> None: ...
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    BULK_FIELD_NUMBER: _ClassVar[int]
    MSG_TYPE_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    kind: Kind
    round: int
    client_id: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    payload_bytes: int
    config: TrainConfig
    num_examples: int
    num_steps: int
    metrics: _containers.MessageMap[str, Metric]
    values: _containers.MessageMap[str, Scalar]
    reason: str
    seconds: float
    bulk: bool
    msg_type: str
    def __init__(self, task_id: _Optional[int] = ..., kind: _Optional[_Union[Kind, str]] = ..., round: _Optional[int] = ..., client_id: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., payload_bytes: _Optional[int] = ..., config: _Optional[_Union[TrainConfig, _Mapping]] = ..., num_examples: _Optional[int] = ..., num_steps: _Optional[int] = ..., metrics: _Optional[_Mapping[str, Metric]] = ..., values: _Optional[_Mapping[str, Scalar]] = ..., reason: _Optional[str] = ..., seconds: _Optional[float] = ..., bulk: _Optional[bool] = ..., msg_type: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("task_id", "offset", "data")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    offset: int
    data: bytes
    def __init__(self, task_id: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class LayoutEntry(_message.Message):
    __slots__ = ("name", "shape", "dtype", "offset", "trainable")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    offset: int
    trainable: bool
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., offset: _Optional[int] = ..., trainable: _Optional[bool] = ...) -> None: ...

class Layout(_message.Message):
    __slots__ = ("entries", "dtype")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LayoutEntry]
    dtype: str
    def __init__(self, entries: _Optional[_Iterable[_Union[LayoutEntry, _Mapping]]] = ..., dtype: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol", "properties")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    properties: _containers.MessageMap[str, Scalar]
    def __init__(self, protocol: _Optional[str] = ..., properties: _Optional[_Mapping[str, Scalar]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("protocol", "layout", "run_config", "max_chunk_bytes", "max_update_bytes", "mode", "bulk_port", "bulk_ticket")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_UPDATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    BULK_PORT_FIELD_NUMBER: _ClassVar[int]
    BULK_TICKET_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    layout: Layout
    run_config: str
    max_chunk_bytes: int
    max_update_bytes: int
    mode: str
    bulk_port: int
    bulk_ticket: bytes
    def __init__(self, protocol: _Optional[str] = ..., layout: _Optional[_Union[Layout, _Mapping]] = ..., run_config: _Optional[str] = ..., max_chunk_bytes: _Optional[int] = ..., max_update_bytes: _Optional[int] = ..., mode: _Optional[str] = ..., bulk_port: _Optional[int] = ..., bulk_ticket: _Optional[bytes] = ...) -> None: ...

class ClientFrame(_message.Message):
    __slots__ = ("hello", "header", "chunk")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    header: Header
    chunk: Chunk
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., header: _Optional[_Union[Header, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class ServerFrame(_message.Message):
    __slots__ = ("welcome", "header", "chunk")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    header: Header
    chunk: Chunk
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., header: _Optional[_Union[Header, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...
