"""Properties of the export spec over its whole schema, from generated JSON (hypothesis).

Whatever JSON a job carries, ``parse_spec`` returns an ``ExportSpec`` or raises ``SpecError``
naming the bad field; nothing else escapes.  What it accepts keeps the CONTRACT: names in
``[A-Za-z0-9._-]{1,128}``, extra-file names that stay inside any folder they are extracted
to, example inputs of bounded size, and a JSON form that parses back to the same spec and
hash.  The gaps these properties found are pinned by tests at the end.
"""

from __future__ import annotations

import base64
import json
import math
import posixpath
import re
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from serializer.archive.extras import MANIFEST_NAME, MAX_NAME_BYTES, validate_extra_name
from serializer.errors import InvalidExtraFile, InvalidURI
from serializer.s3.uri import parse_s3_uri
from worker.errors import SpecError
from worker.spec import (
    DTYPES,
    INT_RANGES,
    MAX_DIMS,
    MAX_INPUT_ELEMENTS,
    ExportSpec,
    TensorSpec,
    parse_spec,
)
from worker.spec.inputs import INPUT_TAGS, input_tensors

#: Bounded and reproducible: the same examples every run, no example database on disk.
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

FIELDS = tuple(ExportSpec.model_fields)
TENSOR_FIELDS = tuple(TensorSpec.model_fields)
STRING_FIELDS = ("name", "builder", "weights", "method", "device", "destination")
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
DEVICE_RE = re.compile(r"cpu|cuda|cuda:\d{1,2}")

# -- strategies ---------------------------------------------------------------------------------

#: Pieces that make names, paths and URIs hostile.
TRICKY = [
    "..",
    ".",
    "/",
    "//",
    "\\",
    ":",
    "C:",
    "~",
    " ",
    "\x00",
    "\n",
    "\r",
    "\t",
    "\x1b[2J",
    "\x7f",
    "\x85",
    "\u202e",
    "\u200d",
    "\u200b",
    "\ufeff",
    "\u2028",
    "\uff0e",
    "\uff0f",
    "e\u0301",
    "\u00e9",
    "\u212b",
    "s3://",
    "manifest.json",
    "export_worker",
    "a",
    "b.txt",
]
tricky_text = st.lists(st.sampled_from(TRICKY) | st.text(max_size=3), max_size=8).map("".join)
hostile_text = st.text(max_size=24) | tricky_text

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities too: Python's JSON (and kombu's) carries them
    | hostile_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
finite_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)

names = st.from_regex(r"[A-Za-z0-9._-]{1,40}", fullmatch=True).filter(lambda n: n not in (".", ".."))
identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
builders = st.builds(
    lambda mods, attr: f"{'.'.join(mods)}:{attr}", st.lists(identifiers, min_size=1, max_size=3), identifiers
)
buckets = st.from_regex(r"[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]", fullmatch=True).filter(lambda b: ".." not in b)
key_segments = st.from_regex(r"[A-Za-z0-9_.=-]{1,10}", fullmatch=True)
object_uris = st.builds(lambda b, k: f"s3://{b}/{'/'.join(k)}", buckets, st.lists(key_segments, min_size=1, max_size=3))
prefix_uris = st.builds(lambda b, k: f"s3://{b}/{'/'.join(k)}", buckets, st.lists(key_segments, max_size=3))
destinations = st.builds(lambda u, slash: u + slash, prefix_uris, st.sampled_from(["", "/"]))
devices = st.sampled_from(["cpu", "cuda"]) | st.integers(0, 99).map(lambda i: f"cuda:{i}")

name_segments = (
    st.text(
        alphabet=st.characters(categories=("Lu", "Ll", "Lo", "Nd")) | st.sampled_from("._- ~"),
        min_size=1,
        max_size=12,
    )
    .map(lambda s: unicodedata.normalize("NFC", s))
    .filter(lambda s: s not in (".", ".."))
)
extra_names = (
    st.lists(name_segments, min_size=1, max_size=4)
    .map("/".join)
    .filter(lambda n: len(n.encode()) <= MAX_NAME_BYTES and n != MANIFEST_NAME and unicodedata.is_normalized("NFC", n))
)
extra_sources = (
    st.text(max_size=40)
    | st.builds(lambda t: {"text": t}, st.text(max_size=40))
    | st.builds(lambda b: {"base64": base64.b64encode(b).decode()}, st.binary(max_size=40))
    | st.builds(lambda u: {"uri": u}, object_uris)
)

shapes = st.lists(st.integers(0, 16), max_size=4)
float_inputs = st.fixed_dictionaries(
    {"shape": shapes, "dtype": st.sampled_from(["float16", "bfloat16", "float32", "float64", "bool"])}
)


@st.composite
def int_inputs(draw: st.DrawFn) -> dict[str, Any]:
    dtype = draw(st.sampled_from(sorted(INT_RANGES)))
    smallest, largest = INT_RANGES[dtype]
    tensor: dict[str, Any] = {"shape": draw(shapes), "dtype": dtype}
    if draw(st.booleans()):
        # Within 2**53 (bounds beyond it are tested at the end).
        low = draw(st.integers(max(smallest, -(2**53)), min(largest, 2**53 - 1)))
        high = draw(st.integers(low + 1, min(largest + 1, 2**53)))
        tensor.update(low=low, high=high)
    return tensor


given_inputs = st.fixed_dictionaries(
    {"value": st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=4)},
    optional={"dtype": st.sampled_from(["float32", "float64"])},
)
tensor_inputs = float_inputs | int_inputs() | given_inputs


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    """Specs the CONTRACT allows: every one must be accepted."""
    spec = draw(
        st.fixed_dictionaries(
            {"name": names, "builder": builders, "destination": destinations},
            optional={
                "kwargs": st.dictionaries(st.text(max_size=8), finite_json, max_size=3),
                "weights": object_uris,
                "method": st.sampled_from(["script", "trace"]),
                "example_inputs": st.lists(tensor_inputs, min_size=1, max_size=3),
                "device": devices,
                "extra_files": st.dictionaries(
                    extra_names.filter(lambda n: n.split("/", 1)[0] != "export_worker"), extra_sources, max_size=3
                ),
                "verify": st.none() | st.booleans(),
                "metadata": st.dictionaries(st.text(max_size=8), finite_json, max_size=3),
                "atol": st.floats(0, 1e3),
                "rtol": st.floats(0, 1e3),
                "seed": st.integers(0, 2**63 - 1),
            },
        )
    )
    if (spec.get("method") == "trace" or spec.get("verify")) and not spec.get("example_inputs"):
        spec["example_inputs"] = [{"shape": [1]}]
    return spec


# -- checks -------------------------------------------------------------------------------------


def outcome(data: Any) -> ExportSpec | SpecError:
    """``parse_spec(data)``: a spec or a SpecError; any other exception fails the property."""
    try:
        return parse_spec(data)
    except SpecError as exc:
        return exc


def check_refusal(data: Any, exc: SpecError) -> None:
    """The message names every problem by its field (or, for the spec as a whole, a field in its text)."""
    message = str(exc)
    if not isinstance(data, dict):
        assert message.startswith("a spec is a JSON object, got "), message
        return
    assert message.startswith("invalid spec: "), message
    try:
        ExportSpec.model_validate(data)
    except ValidationError as validation:
        errors = validation.errors(include_url=False)
    else:  # pragma: no cover - parse_spec refused what the model accepts
        pytest.fail(f"parse_spec refused a spec the model accepts: {message}")
    for err in errors:
        # The tags of an example input's form (<tensor>, <list>, <dict>) are no field: left out.
        loc = ".".join(str(p) for p in err["loc"] if p not in INPUT_TAGS)
        if err["loc"]:
            assert err["loc"][0] in FIELDS or err["loc"][0] in data, err
            # An unknown field named "" is reported as the spec's own problem.
            assert f"{loc or 'spec'}: " in message, f"{loc!r} not named in {message!r}"
        else:
            assert any(f in err["msg"] for f in FIELDS), err


def check_extra_name(name: str) -> None:
    """An accepted extra-file name: a relative POSIX path that stays inside any target folder."""
    assert isinstance(name, str) and name
    assert not name.startswith("/")
    assert all(s not in ("", ".", "..") for s in name.split("/")), name
    assert "\\" not in name and "\x00" not in name
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs") for c in name), ascii(name)
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert unicodedata.is_normalized("NFC", name)
    assert posixpath.normpath(posixpath.join("/target", name)).startswith("/target/"), name


def check_accepted(spec: ExportSpec) -> None:
    """What every accepted spec keeps, and its JSON form parsing back to the same spec and hash."""
    assert NAME_RE.fullmatch(spec.name) and spec.name not in (".", "..")
    assert DEVICE_RE.fullmatch(spec.device)
    parse_s3_uri(spec.destination, require_key=False)
    if spec.weights is not None:
        parse_s3_uri(spec.weights)
    for name in spec.extra_files:
        check_extra_name(name)
    for tensor in [t for entry in spec.example_inputs or [] for t in input_tensors(entry)]:
        assert tensor.dtype in DTYPES
        assert (tensor.shape is None) != (tensor.value is None)
        if tensor.shape is not None:
            assert len(tensor.shape) <= MAX_DIMS
            assert all(isinstance(d, int) and d >= 0 for d in tensor.shape)
            assert math.prod(tensor.shape) <= MAX_INPUT_ELEMENTS
    assert spec.atol >= 0 and spec.rtol >= 0 and 0 <= spec.seed < 2**63
    as_json = spec.to_json_dict()
    again = parse_spec(as_json)
    assert again == spec
    assert again.spec_hash == spec.spec_hash
    # Through JSON text, as a job carries it, and with its keys in another order.
    wire = json.loads(json.dumps(dict(reversed(list(as_json.items())))))
    assert parse_spec(wire).spec_hash == spec.spec_hash


def check(data: Any) -> ExportSpec | SpecError:
    result = outcome(data)
    if isinstance(result, SpecError):
        check_refusal(data, result)
    else:
        check_accepted(result)
    return result


def known_bug(data: Any) -> bool:
    """Specs with infinite tolerances (refused; tested at the end), kept out of the properties."""
    return isinstance(data, dict) and any(
        isinstance(data.get(f), float) and math.isinf(data[f]) and data[f] > 0 for f in ("atol", "rtol")
    )


# -- properties ----------------------------------------------------------------------------------


@PROPERTY
@given(data=json_values)
def test_any_json_value_is_a_spec_or_a_spec_error(data: Any) -> None:
    check(data)


@PROPERTY
@given(data=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=8))
def test_any_json_object_is_a_spec_or_a_spec_error_naming_its_fields(data: dict[str, Any]) -> None:
    assume(not known_bug(data))
    check(data)


@PROPERTY
@given(spec=valid_specs())
def test_valid_specs_are_accepted_and_round_trip_with_the_same_hash(spec: dict[str, Any]) -> None:
    result = outcome(spec)
    assert isinstance(result, ExportSpec), result
    check_accepted(result)
    assert result.queue == ("gpu" if result.device.startswith("cuda") else "cpu")


@PROPERTY
@given(spec=valid_specs(), field=st.sampled_from(FIELDS), value=json_values)
def test_a_valid_spec_with_one_field_replaced_is_a_spec_or_names_that_field(
    spec: dict[str, Any], field: str, value: Any
) -> None:
    data = {**spec, field: value}
    assume(not known_bug(data))
    result = check(data)
    if isinstance(result, SpecError):
        assert field in str(result), f"{field!r} not named in {result}"


@PROPERTY
@given(spec=valid_specs(), field=st.sampled_from(STRING_FIELDS), value=hostile_text)
def test_hostile_text_in_a_string_field_is_refused_or_harmless(spec: dict[str, Any], field: str, value: str) -> None:
    result = check({**spec, field: value})
    if isinstance(result, SpecError):
        assert field in str(result), f"{field!r} not named in {result}"


@PROPERTY
@given(spec=valid_specs(), name=hostile_text, source=extra_sources | json_values)
def test_hostile_extra_file_names_and_sources_are_refused_or_harmless(
    spec: dict[str, Any], name: str, source: Any
) -> None:
    result = check({**spec, "extra_files": {name: source}})
    if isinstance(result, SpecError):
        assert "extra_files" in str(result)


@PROPERTY
@given(spec=valid_specs(), tensor=st.dictionaries(st.sampled_from(TENSOR_FIELDS) | st.text(max_size=4), json_values))
def test_any_example_input_is_a_spec_or_names_it(spec: dict[str, Any], tensor: dict[str, Any]) -> None:
    result = check({**spec, "example_inputs": [tensor]})
    if isinstance(result, SpecError):
        assert "example_inputs" in str(result)


@PROPERTY
@given(
    shape=st.lists(
        st.integers(-(2**40), 2**40) | st.integers(0, 2**12) | st.sampled_from([0, 1, 2**31, 2**31 + 1]),
        max_size=MAX_DIMS + 2,
    ),
    dtype=st.sampled_from(sorted(DTYPES)),
)
def test_accepted_shapes_are_non_negative_and_bounded(shape: list[int], dtype: str) -> None:
    spec = {
        "name": "s",
        "builder": "a:b",
        "destination": "s3://bucket",
        "example_inputs": [{"shape": shape, "dtype": dtype}],
    }
    result = check(spec)
    if isinstance(result, SpecError):
        assert "example_inputs.0" in str(result)
    else:
        assert math.prod(shape) <= MAX_INPUT_ELEMENTS and min(shape, default=0) >= 0 and len(shape) <= MAX_DIMS


@PROPERTY
@given(name=hostile_text | extra_names | st.lists(st.sampled_from(TRICKY), max_size=6).map("/".join))
def test_validate_extra_name_accepts_only_names_that_stay_inside(name: str) -> None:
    try:
        accepted = validate_extra_name(name)
    except InvalidExtraFile as exc:
        assert isinstance(exc, ValueError)
        assert str(exc)
        return
    assert accepted == name
    check_extra_name(name)


@PROPERTY
@given(name=extra_names)
def test_well_formed_extra_names_are_accepted(name: str) -> None:
    assert validate_extra_name(name) == name


@PROPERTY
@given(uri=hostile_text.map(lambda t: "s3://" + t))
def test_s3_uris_are_parsed_or_refused_with_invalid_uri(uri: str) -> None:
    try:
        parsed = parse_s3_uri(uri, require_key=False)
    except InvalidURI:
        return
    assert not any(ord(c) < 32 or ord(c) == 127 for c in uri)
    assert parsed.bucket and ".." not in parsed.bucket


# -- gaps found and closed: deep JSON, wrong JSON types, infinities, drive letters, C1 controls ----

BASE: dict[str, Any] = {"name": "tiny", "builder": "worker.examples:tiny_classifier", "destination": "s3://models/prod"}


def _deep(depth: int, leaf: Any = 0) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("kwargs", {"deep": _deep(100)}, id="kwargs-100-deep"),
        pytest.param("metadata", {"deep": _deep(100)}, id="metadata-100-deep"),
        pytest.param(
            "kwargs",
            {"deep": _deep(300)},
            id="kwargs-300-deep",
        ),
        pytest.param(
            "metadata",
            {"deep": _deep(300)},
            id="metadata-300-deep",
        ),
        pytest.param(
            "example_inputs",
            [{"value": _deep(300)}],
            id="value-300-deep",
        ),
        pytest.param(
            "kwargs",
            {"deep": _deep(1500)},
            id="kwargs-1500-deep",
        ),
    ],
)
def test_deeply_nested_json_is_refused_by_field_or_fully_usable(field: str, value: Any) -> None:
    try:
        spec = parse_spec({**BASE, field: value})
    except SpecError as exc:
        assert field in str(exc)
        return
    # Accepted: then it must hash and travel like any other spec.
    assert parse_spec(spec.to_json_dict()).spec_hash == spec.spec_hash


def test_the_total_size_of_example_inputs_is_bounded() -> None:
    inputs = [{"shape": [MAX_INPUT_ELEMENTS], "dtype": "float32"}] * 1024
    with pytest.raises(SpecError, match="example_inputs"):
        parse_spec({**BASE, "example_inputs": inputs})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("atol", math.inf, id="atol-inf"),
        pytest.param("rtol", math.inf, id="rtol-inf"),
    ],
)
def test_infinite_tolerances_are_refused_or_hashable(field: str, value: float) -> None:
    try:
        spec = parse_spec({**BASE, field: value})
    except SpecError as exc:
        assert field in str(exc)
        return
    assert parse_spec(spec.to_json_dict()).spec_hash == spec.spec_hash


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("example_inputs", [{"shape": [True, 4]}], id="shape-bool"),
        pytest.param("example_inputs", [{"shape": ["2", 4]}], id="shape-string"),
        pytest.param("example_inputs", [{"shape": [2], "dtype": "int64", "low": "3"}], id="low-string"),
        pytest.param("seed", "5", id="seed-string"),
        pytest.param("seed", True, id="seed-bool"),
        pytest.param("atol", "0.1", id="atol-string"),
        pytest.param("verify", "yes", id="verify-yes"),
        pytest.param("verify", 0, id="verify-zero"),
    ],
)
def test_a_value_of_the_wrong_json_type_is_refused(field: str, value: Any) -> None:
    data = {**BASE, "example_inputs": [{"shape": [1, 16]}], field: value}
    with pytest.raises(SpecError, match=field):
        parse_spec(data)


@pytest.mark.parametrize("name", ["C:/evil.txt", "c:evil.txt", "Z:/a/b"])
def test_extra_names_with_a_windows_drive_are_refused(name: str) -> None:
    import ntpath

    assert not ntpath.join("D:\\target", name).startswith("D:\\target")  # where a Windows consumer writes it
    with pytest.raises(InvalidExtraFile):
        validate_extra_name(name)


@pytest.mark.parametrize("char", ["\x85", "\x9b"], ids=["U+0085-next-line", "U+009B-csi"])
def test_uris_with_c1_control_characters_are_refused(char: str) -> None:
    assert unicodedata.category(char) == "Cc"
    with pytest.raises(InvalidURI, match="control"):
        parse_s3_uri(f"s3://bucket/models{char}[2J")


def test_integer_bounds_are_kept_exactly() -> None:
    low, high = 2**53 + 1, 2**53 + 3
    spec = parse_spec({**BASE, "example_inputs": [{"shape": [8], "dtype": "int64", "low": low, "high": high}]})
    assert spec.example_inputs is not None
    assert spec.example_inputs[0].int_bounds() == (low, high)
