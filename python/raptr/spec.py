"""Job specs from Python dicts or YAML, by the rules of raptrctl's job files.

The rules are the ones proto/raptr/v1/job.proto documents and common/job_spec.cc applies to
`raptrctl submit -f`: keys are JobSpec's field names (snake_case), an enum value is written
without its type's prefix in either case (`decay: cosine` for LR_DECAY_COSINE; the full name is
accepted too), a oneof is chosen by the key present, and an unknown key is an error naming its
path and the nearest field. The conversion walks the generated descriptors, so a field added to
the proto needs nothing here. tests/python/client_test.py checks that every example job file
converts to the JobSpec raptrctl sends.
"""
import math
import os
import re

import yaml
from google.protobuf import descriptor as _descriptor

from raptr.v1 import job_pb2

_FD = _descriptor.FieldDescriptor


class _Loader(yaml.SafeLoader):
    """YAML as raptrctl reads it (yaml-cpp, YAML 1.2 scalars): `1e-3` is a number, and only
    true/false (any case) are booleans, so `name: yes` stays the string "yes"."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, regexp) for tag, regexp in v
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


class SpecError(ValueError):
    """A job spec that cannot be converted: `field` is the path of the offending key
    (e.g. "optimizer.skipped"), `message` says what is wrong with it."""

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


def _enum_prefix(enum_type):
    # LrDecay -> LR_DECAY_, SkippedLayerPolicy -> SKIPPED_LAYER_POLICY_ (common/job_spec.cc).
    name = enum_type.name
    out = []
    for i, c in enumerate(name):
        word_start = i > 0 and c.isupper() and (
            not name[i - 1].isupper() or (i + 1 < len(name) and name[i + 1].islower()))
        if word_start:
            out.append("_")
        out.append(c.upper())
    return "".join(out) + "_"


def _short(value):
    prefix = _enum_prefix(value.type)
    if value.name.startswith(prefix) and len(value.name) > len(prefix):
        return value.name[len(prefix):]
    return value.name


def _unspecified(value):
    return value.number == 0 and value.name.endswith("UNSPECIFIED")


def enum_names(enum_type):
    """The names a job file may use for an enum's values: lower case, without the prefix."""
    return [_short(v).lower() for v in enum_type.values if not _unspecified(v)]


def _loose(name):
    return name.replace("_", "").replace("-", "").lower()


def _distance(a, b):
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _unknown(descriptor, key, path):
    names = [f.name for f in descriptor.fields]
    loose = [n for n in names if _loose(n) == _loose(key)]
    near = loose or sorted((n for n in names if _distance(n, key) <= 2),
                           key=lambda n: _distance(n, key))
    hint = f"; did you mean '{near[0]}'?" if near else f"; {descriptor.name} has: {', '.join(names)}"
    return SpecError(path, f"unknown field '{key}'{hint}")


def _scalar(field, value, path):
    t = field.type
    if t == _FD.TYPE_ENUM:
        if isinstance(value, str):
            for v in field.enum_type.values:
                if _unspecified(v):
                    continue
                if value.lower() in (_short(v).lower(), v.name.lower()):
                    return v.number
        raise SpecError(path, f"expected one of {', '.join(enum_names(field.enum_type))}, "
                              f"got {value!r}")
    if t == _FD.TYPE_BOOL:
        if isinstance(value, bool):
            return value
        raise SpecError(path, f"expected true or false, got {value!r}")
    if t in (_FD.TYPE_INT32, _FD.TYPE_INT64, _FD.TYPE_UINT32, _FD.TYPE_UINT64, _FD.TYPE_SINT32,
             _FD.TYPE_SINT64, _FD.TYPE_FIXED32, _FD.TYPE_FIXED64, _FD.TYPE_SFIXED32,
             _FD.TYPE_SFIXED64):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(path, f"expected an integer, got {value!r}")
        bits = 32 if t in (_FD.TYPE_INT32, _FD.TYPE_UINT32, _FD.TYPE_SINT32, _FD.TYPE_FIXED32,
                           _FD.TYPE_SFIXED32) else 64
        unsigned = t in (_FD.TYPE_UINT32, _FD.TYPE_UINT64, _FD.TYPE_FIXED32, _FD.TYPE_FIXED64)
        lo, hi = (0, 2 ** bits - 1) if unsigned else (-2 ** (bits - 1), 2 ** (bits - 1) - 1)
        if not lo <= value <= hi:
            raise SpecError(path, f"{value} is out of range for a {bits}-bit integer")
        return value
    if t in (_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(path, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise SpecError(path, f"expected a finite number, got {value!r}")
        return float(value)
    if t == _FD.TYPE_STRING:
        if isinstance(value, (dict, list)) or value is None:
            raise SpecError(path, f"expected a string, got {value!r}")
        # As in YAML job files: `name: 2024` is the string "2024".
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    raise SpecError(path, f"unsupported field type {t}")


def _fill(message, data, path):
    if not isinstance(data, dict):
        raise SpecError(path, f"expected a map, got {data!r}")
    descriptor = message.DESCRIPTOR
    chosen = {}
    for key, value in data.items():
        key = str(key)
        field = descriptor.fields_by_name.get(key)
        sub = f"{path}.{key}" if path else key
        if field is None:
            raise _unknown(descriptor, key, sub)
        oneof = field.containing_oneof
        if oneof is not None and not oneof.name.startswith("_"):
            if oneof.name in chosen:
                raise SpecError(sub, f"'{chosen[oneof.name]}' is already set: only one of "
                                     f"{', '.join(f.name for f in oneof.fields)}")
            chosen[oneof.name] = key
        if value is None and field.message_type is not None and \
                field.label != _FD.LABEL_REPEATED:
            message.ClearField(key)
            getattr(message, key).SetInParent()  # `full:` with nothing under it picks full
            continue
        if field.label == _FD.LABEL_REPEATED:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                raise SpecError(sub, "map fields are not part of JobSpec")
            if not isinstance(value, list):
                raise SpecError(sub, f"expected a list, got {value!r}")
            target = getattr(message, key)
            for i, item in enumerate(value):
                if field.message_type is not None:
                    _fill(target.add(), item, f"{sub}[{i}]")
                else:
                    target.append(_scalar(field, item, f"{sub}[{i}]"))
        elif field.message_type is not None:
            child = getattr(message, key)
            child.SetInParent()
            _fill(child, value, sub)
        else:
            setattr(message, key, _scalar(field, value, sub))


def to_job_spec(spec):
    """A JobSpec from a dict, a path to a YAML file, a YAML string, or a JobSpec (returned as is).
    Raises SpecError naming the offending key."""
    if isinstance(spec, job_pb2.JobSpec):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        text = str(spec)
        if isinstance(spec, os.PathLike) or (
                "\n" not in text and re.search(r"\.ya?ml$", text) and os.path.exists(text)):
            with open(text) as f:
                text = f.read()
        elif "\n" not in text and re.search(r"\.ya?ml$", text):
            raise SpecError("", f"no such job file: {text}")
        try:
            spec = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as e:
            raise SpecError("", f"not valid YAML: {e}") from None
        if spec is None:
            spec = {}
    if not isinstance(spec, dict):
        raise SpecError("", f"a job spec is a map (dict or YAML), got {type(spec).__name__}")
    out = job_pb2.JobSpec()
    _fill(out, spec, "")
    return out
