"""ASDU codec: the data unit header (type, VSQ, COT, originator, common address) and its objects.

Field sizes are the 104 ones: two-octet COT (cause with T and P/N bits, then originator), a
two-octet common address and three-octet information object addresses.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gridpilot.protocols.iec104.apci import MAX_ASDU_LENGTH
from gridpilot.protocols.iec104.cp56 import CP56_LENGTH, decode_cp56, encode_cp56
from gridpilot.protocols.iec104.elements import (
    MAX_IOA,
    QDS_MASK,
    SIQ_MASK,
    ClockSync,
    Cot,
    DoubleCommand,
    DoublePoint,
    DoublePointState,
    FloatValue,
    InformationObject,
    Interrogation,
    Quality,
    ScaledValue,
    SingleCommand,
    SinglePoint,
    TypeId,
    type_id_of,
)
from gridpilot.protocols.iec104.errors import (
    InvalidFieldError,
    TruncatedError,
    UnknownTypeError,
)

HEADER_LENGTH = 6
IOA_LENGTH = 3
MAX_OBJECTS = 127  # seven bits of the variable structure qualifier
_F32 = struct.Struct("<f")
_I16 = struct.Struct("<h")

_Decoder = Callable[[bytes, int, int], InformationObject]  # (data, offset, ioa) -> object


def _decode_single(timed: bool) -> _Decoder:
    def decode(data: bytes, at: int, ioa: int) -> InformationObject:
        siq = data[at]
        time = decode_cp56(data, at + 1) if timed else None
        return SinglePoint(ioa=ioa, value=bool(siq & 1), quality=Quality(siq & SIQ_MASK), time=time)

    return decode


def _decode_double(timed: bool) -> _Decoder:
    def decode(data: bytes, at: int, ioa: int) -> InformationObject:
        diq = data[at]
        time = decode_cp56(data, at + 1) if timed else None
        return DoublePoint(
            ioa=ioa, value=DoublePointState(diq & 3), quality=Quality(diq & SIQ_MASK), time=time
        )

    return decode


def _decode_scaled(timed: bool) -> _Decoder:
    def decode(data: bytes, at: int, ioa: int) -> InformationObject:
        (value,) = _I16.unpack_from(data, at)
        time = decode_cp56(data, at + 3) if timed else None
        return ScaledValue(
            ioa=ioa, value=value, quality=Quality(data[at + 2] & QDS_MASK), time=time
        )

    return decode


def _decode_float(timed: bool) -> _Decoder:
    def decode(data: bytes, at: int, ioa: int) -> InformationObject:
        (value,) = _F32.unpack_from(data, at)
        time = decode_cp56(data, at + 5) if timed else None
        return FloatValue(ioa=ioa, value=value, quality=Quality(data[at + 4] & QDS_MASK), time=time)

    return decode


def _decode_sco(data: bytes, at: int, ioa: int) -> InformationObject:
    sco = data[at]
    return SingleCommand(
        ioa=ioa, on=bool(sco & 1), select=bool(sco & 0x80), qualifier=(sco >> 2) & 0x1F
    )


def _decode_dco(data: bytes, at: int, ioa: int) -> InformationObject:
    dco = data[at]
    return DoubleCommand(
        ioa=ioa,
        state=DoublePointState(dco & 3),
        select=bool(dco & 0x80),
        qualifier=(dco >> 2) & 0x1F,
    )


def _decode_qoi(data: bytes, at: int, ioa: int) -> InformationObject:
    return Interrogation(ioa=ioa, qualifier=data[at])


def _decode_clock(data: bytes, at: int, ioa: int) -> InformationObject:
    return ClockSync(ioa=ioa, time=decode_cp56(data, at))


# type -> (element length without the IOA, decoder)
_CODECS: dict[int, tuple[int, _Decoder]] = {
    TypeId.M_SP_NA_1: (1, _decode_single(False)),
    TypeId.M_DP_NA_1: (1, _decode_double(False)),
    TypeId.M_ME_NB_1: (3, _decode_scaled(False)),
    TypeId.M_ME_NC_1: (5, _decode_float(False)),
    TypeId.M_SP_TB_1: (1 + CP56_LENGTH, _decode_single(True)),
    TypeId.M_DP_TB_1: (1 + CP56_LENGTH, _decode_double(True)),
    TypeId.M_ME_TE_1: (3 + CP56_LENGTH, _decode_scaled(True)),
    TypeId.M_ME_TF_1: (5 + CP56_LENGTH, _decode_float(True)),
    TypeId.C_SC_NA_1: (1, _decode_sco),
    TypeId.C_DC_NA_1: (1, _decode_dco),
    TypeId.C_IC_NA_1: (1, _decode_qoi),
    TypeId.C_CS_NA_1: (CP56_LENGTH, _decode_clock),
}


def _encode_element(obj: InformationObject) -> bytes:
    time = b"" if obj.time is None else encode_cp56(obj.time)
    if isinstance(obj, SinglePoint):
        return bytes((int(obj.value) | int(obj.quality),)) + time
    if isinstance(obj, DoublePoint):
        return bytes((int(obj.value) | int(obj.quality),)) + time
    if isinstance(obj, ScaledValue):
        return _I16.pack(obj.value) + bytes((int(obj.quality),)) + time
    if isinstance(obj, FloatValue):
        return _F32.pack(obj.value) + bytes((int(obj.quality),)) + time
    if isinstance(obj, SingleCommand):
        return bytes((int(obj.on) | obj.qualifier << 2 | (0x80 if obj.select else 0),))
    if isinstance(obj, DoubleCommand):
        return bytes((int(obj.state) | obj.qualifier << 2 | (0x80 if obj.select else 0),))
    if isinstance(obj, Interrogation):
        return bytes((obj.qualifier,))
    return time  # ClockSync: the time tag is the whole element


def element_length(type_id: TypeId) -> int:
    return _CODECS[type_id][0]


@dataclass(frozen=True, slots=True, kw_only=True)
class Asdu:
    """One application service data unit; the type identification follows from the objects."""

    cot: Cot
    common_address: int
    objects: tuple[InformationObject, ...]
    negative: bool = False  # P/N bit: a negative confirmation
    test: bool = False  # T bit: a test transmission, not to be acted on
    originator: int = 0
    sequence: bool = False  # SQ bit: one IOA, the objects at consecutive addresses

    def __post_init__(self) -> None:
        if not isinstance(self.objects, tuple):
            object.__setattr__(self, "objects", tuple(self.objects))
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"an ASDU carries 1..{MAX_OBJECTS} objects, got {len(self.objects)}")
        kinds = {type_id_of(obj) for obj in self.objects}
        if len(kinds) != 1:
            raise ValueError(f"all objects of an ASDU must be of one type, got {sorted(kinds)}")
        if not 0 <= self.common_address <= 0xFFFF:
            raise ValueError(f"the common address is two octets, got {self.common_address}")
        if not 0 <= self.originator <= 0xFF:
            raise ValueError(f"the originator address is one octet, got {self.originator}")
        if self.sequence:
            first = self.objects[0].ioa
            if any(obj.ioa != first + i for i, obj in enumerate(self.objects)):
                raise ValueError("SQ=1 needs objects at consecutive addresses")

    @property
    def type_id(self) -> TypeId:
        return type_id_of(self.objects[0])


def _ioa_bytes(ioa: int) -> bytes:
    return bytes((ioa & 0xFF, (ioa >> 8) & 0xFF, ioa >> 16))


def encode_asdu(asdu: Asdu) -> bytes:
    cot = int(asdu.cot) | (0x40 if asdu.negative else 0) | (0x80 if asdu.test else 0)
    out = bytearray(
        (
            asdu.type_id,
            (0x80 if asdu.sequence else 0) | len(asdu.objects),
            cot,
            asdu.originator,
            asdu.common_address & 0xFF,
            asdu.common_address >> 8,
        )
    )
    for i, obj in enumerate(asdu.objects):
        if i == 0 or not asdu.sequence:
            out += _ioa_bytes(obj.ioa)
        out += _encode_element(obj)
    if len(out) > MAX_ASDU_LENGTH:
        raise ValueError(
            f"the ASDU is {len(out)} octets, the limit is {MAX_ASDU_LENGTH}: use pack_asdus"
        )
    return bytes(out)


def decode_asdu(data: bytes) -> Asdu:
    """Decode one ASDU; raises only ``Iec104Error`` subclasses."""
    if len(data) < HEADER_LENGTH:
        raise TruncatedError("ASDU header", needed=HEADER_LENGTH, available=len(data))
    type_id, vsq, cot_octet, originator = data[0], data[1], data[2], data[3]
    common_address = data[4] | (data[5] << 8)
    if type_id not in _CODECS:
        raise UnknownTypeError(
            type_id,
            common_address=common_address,
            cot=cot_octet & 0x3F,
            originator=originator,
            raw=bytes(data),
        )
    sequence, count = bool(vsq & 0x80), vsq & 0x7F
    if count == 0:
        raise InvalidFieldError("number of objects", 0, offset=1)
    try:
        cot = Cot(cot_octet & 0x3F)
    except ValueError:
        raise InvalidFieldError("cause of transmission", cot_octet & 0x3F, offset=2) from None
    size, decode = _CODECS[type_id]
    expected = HEADER_LENGTH + (
        IOA_LENGTH + count * size if sequence else count * (IOA_LENGTH + size)
    )
    if len(data) < expected:
        raise TruncatedError(
            f"ASDU of {count} type {type_id} objects", needed=expected, available=len(data)
        )
    if len(data) > expected:
        raise InvalidFieldError("ASDU length", len(data), offset=expected)
    objects: list[InformationObject] = []
    at = HEADER_LENGTH
    base = 0
    for i in range(count):
        if i == 0 or not sequence:
            base = data[at] | (data[at + 1] << 8) | (data[at + 2] << 16)
            at += IOA_LENGTH
        ioa = base + i if sequence else base
        if ioa > MAX_IOA:
            raise InvalidFieldError("information object address", ioa, offset=at)
        objects.append(decode(data, at, ioa))
        at += size
    return Asdu(
        cot=cot,
        common_address=common_address,
        objects=tuple(objects),
        negative=bool(cot_octet & 0x40),
        test=bool(cot_octet & 0x80),
        originator=originator,
        sequence=sequence,
    )


def pack_asdus(
    objects: Iterable[InformationObject],
    *,
    cot: Cot,
    common_address: int,
    originator: int = 0,
) -> list[Asdu]:
    """Group objects into as few ASDUs (SQ=0) as the 249-octet limit allows, keeping order."""
    out: list[Asdu] = []
    batch: list[InformationObject] = []
    batch_type: TypeId | None = None

    def flush() -> None:
        if batch:
            out.append(
                Asdu(
                    cot=cot,
                    common_address=common_address,
                    originator=originator,
                    objects=tuple(batch),
                )
            )
            batch.clear()

    for obj in objects:
        type_id = type_id_of(obj)
        room = min(
            MAX_OBJECTS, (MAX_ASDU_LENGTH - HEADER_LENGTH) // (IOA_LENGTH + element_length(type_id))
        )
        if type_id != batch_type or len(batch) >= room:
            flush()
            batch_type = type_id
        batch.append(obj)
    flush()
    return out


def mirror(
    asdu: Asdu,
    *,
    cot: Cot,
    negative: bool = False,
    objects: Sequence[InformationObject] | None = None,
) -> Asdu:
    """The reply to a command: same type, address and originator, a new cause."""
    return Asdu(
        cot=cot,
        common_address=asdu.common_address,
        originator=asdu.originator,
        objects=tuple(objects) if objects is not None else asdu.objects,
        negative=negative,
        test=asdu.test,
    )


def refuse_raw(raw: bytes, *, cot: Cot) -> bytes:
    """A negative mirror of an ASDU that could not be decoded (an unknown type): new COT only."""
    return raw[:2] + bytes(((raw[2] & 0x80) | 0x40 | cot,)) + raw[3:]
